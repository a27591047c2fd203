//! Load-balancer hot paths: one pick per policy at 10 and 10,000 endpoints (all
//! eligible, active counts read from atomics), building the ring hash and
//! maglev tables at 10,000 endpoints, hashing a request and choosing a
//! priority level. Run with `cargo bench --bench lb`; about a minute.

use std::{
    hint::black_box,
    net::IpAddr,
    sync::atomic::{AtomicU64, Ordering::Relaxed},
    time::Duration,
};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, HeaderName, HeaderValue};
use remora::balance::{
    hash::{request_hash, HashKind, HashPolicy},
    lb::{Balancer, HostInfo, LbPolicy},
    priority::{plan, LevelHealth, DEFAULT_PANIC_THRESHOLD},
};

fn hosts(n: usize) -> Vec<HostInfo> {
    (0..n)
        .map(|i| HostInfo {
            key: format!("10.{}.{}.{}:8080", (i >> 16) & 255, (i >> 8) & 255, i & 255),
            weight: 1,
        })
        .collect()
}

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("lb_pick");
    for n in [10, 10_000] {
        let hosts = hosts(n);
        let active: Vec<AtomicU64> = (0..n).map(|i| AtomicU64::new((i % 7) as u64)).collect();
        let active = |i: usize| active[i].load(Relaxed);
        let eligible = |_: usize| true;
        let policies = [
            ("round_robin", LbPolicy::RoundRobin),
            ("least_request_p2c", LbPolicy::least_request()),
            ("ring_hash", LbPolicy::ring_hash()),
            ("maglev", LbPolicy::maglev()),
        ];
        for (name, policy) in policies {
            let balancer = Balancer::new(&policy, &hosts);
            let mut key = 0u64;
            group.bench_with_input(BenchmarkId::new(name, n), &balancer, |b, balancer| {
                b.iter(|| {
                    key = key.wrapping_add(0x9E37_79B9_7F4A_7C15);
                    black_box(balancer.pick(Some(key), &active, &eligible))
                })
            });
        }
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("lb_build");
    let hosts = hosts(10_000);
    for (name, policy) in [("ring_hash", LbPolicy::ring_hash()), ("maglev", LbPolicy::maglev())] {
        group.bench_with_input(BenchmarkId::new(name, hosts.len()), &hosts, |b, hosts| {
            b.iter(|| black_box(Balancer::new(&policy, hosts)))
        });
    }
    group.finish();
}

fn request(c: &mut Criterion) {
    let policies = [
        HashPolicy {
            kind: HashKind::Header(HeaderName::from_static("x-user-id")),
            terminal: false,
        },
        HashPolicy {
            kind: HashKind::Cookie("session".into()),
            terminal: false,
        },
        HashPolicy {
            kind: HashKind::SourceIp,
            terminal: false,
        },
    ];
    let mut headers = HeaderMap::new();
    headers.insert(
        "x-user-id",
        HeaderValue::from_static("4b7c0d3e-9a51-4f2e-8d6a-2f0c1e9b7a44"),
    );
    headers.insert(
        "cookie",
        HeaderValue::from_static("theme=dark; session=abc123def456; lang=en"),
    );
    let source: Option<IpAddr> = Some([10, 1, 2, 3].into());
    c.bench_function("request_hash/header+cookie+source_ip", |b| {
        b.iter(|| black_box(request_hash(&policies, black_box(&headers), None, source)))
    });

    let level = |total, healthy, degraded| LevelHealth {
        total,
        healthy,
        degraded,
        excluded: 0,
    };
    let levels = [level(20, 9, 2), level(20, 20, 0), level(5, 5, 0)];
    let mut random = 0u64;
    c.bench_function("priority/plan+choose_3_levels", |b| {
        b.iter(|| {
            random = random.wrapping_add(37);
            black_box(plan(black_box(&levels), DEFAULT_PANIC_THRESHOLD).choose(random))
        })
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = pick, build, request
}
criterion_main!(benches);
