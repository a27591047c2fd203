use super::*;

fn all(_: usize) -> bool {
    true
}

fn idle(_: usize) -> u64 {
    0
}

fn weighted(weights: &[u32]) -> Vec<HostInfo> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| HostInfo {
            key: format!("10.0.0.{i}:8080"),
            weight,
        })
        .collect()
}

fn equal(n: usize) -> Vec<HostInfo> {
    weighted(&vec![1; n])
}

/// Hosts as Envoy's ring hash and maglev tests name them: "127.0.0.1:<port>".
fn ports(ports: &[(u16, u32)]) -> Vec<HostInfo> {
    ports
        .iter()
        .map(|&(p, weight)| HostInfo {
            key: format!("127.0.0.1:{p}"),
            weight,
        })
        .collect()
}

fn tally(
    b: &Balancer,
    picks: usize,
    hash: impl Fn(usize) -> Option<u64>,
    eligible: &dyn Fn(usize) -> bool,
) -> Vec<usize> {
    let mut counts = vec![0; b.len()];
    for k in 0..picks {
        if let Some(i) = b.pick(hash(k), &idle, eligible) {
            counts[i] += 1;
        }
    }
    counts
}

fn shares(counts: &[usize]) -> Vec<f64> {
    let total: usize = counts.iter().sum();
    counts.iter().map(|&c| c as f64 / total as f64).collect()
}

fn assert_shares(got: &[f64], want: &[f64], tolerance: f64, what: &str) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tolerance,
            "{what}: host {i} got {g:.4}, want {w:.4} (all: {got:?})"
        );
    }
}

fn policies() -> Vec<LbPolicy> {
    vec![
        LbPolicy::RoundRobin,
        LbPolicy::least_request(),
        LbPolicy::Random,
        LbPolicy::ring_hash(),
        LbPolicy::maglev(),
    ]
}

// Envoy shares one thread-aware balancer across workers; ours is shared behind Arc.
#[test]
fn balancer_is_send_sync_and_empty_lists_pick_nothing() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Balancer>();
    for policy in policies() {
        let b = Balancer::new(&policy, &[]);
        assert!(b.is_empty());
        assert_eq!(b.pick(Some(1), &idle, &all), None, "{policy:?}");
    }
}

// Envoy: a host rejected by the predicate (unhealthy, ejected, previous try)
// is never returned; when none is left, no host.
#[test]
fn no_eligible_host_no_pick() {
    for policy in policies() {
        for hosts in [equal(5), weighted(&[1, 2, 3, 4, 5]), weighted(&[1, 70_000, 3, 5])] {
            let b = Balancer::new(&policy, &hosts);
            assert_eq!(b.pick(Some(7), &idle, &|_| false), None, "{policy:?}");
            assert_eq!(b.pick(None, &idle, &|i| i == 3), Some(3), "{policy:?}");
        }
    }
}

// Envoy round robin with equal weights: plain index rotation, every host in turn.
#[test]
fn round_robin_rotates_evenly() {
    let b = Balancer::new(&LbPolicy::RoundRobin, &equal(3));
    let first = b.pick(None, &idle, &all).unwrap();
    for k in 1..300 {
        assert_eq!(b.pick(None, &idle, &all), Some((first + k) % 3));
    }
    assert_eq!(tally(&b, 300, |_| None, &all), vec![100, 100, 100]);
}

// Envoy weighted round robin (EDF): each host gets exactly its weight's share
// of every cycle.
#[test]
fn weighted_round_robin_matches_weights_each_cycle() {
    let cases: &[(&[u32], &[usize])] = &[
        (&[1, 2, 3], &[1, 2, 3]),
        (&[5, 1], &[5, 1]),
        (&[2, 2, 4], &[1, 1, 2]),
        (&[1, 1, 1, 7], &[1, 1, 1, 7]),
        (&[100, 300, 600], &[1, 3, 6]),
        (&[0, 2], &[1, 2]),
    ];
    for &(weights, per_cycle) in cases {
        let b = Balancer::new(&LbPolicy::RoundRobin, &weighted(weights));
        let cycle: usize = per_cycle.iter().sum();
        let want: Vec<usize> = per_cycle.iter().map(|c| c * 50).collect();
        assert_eq!(tally(&b, cycle * 50, |_| None, &all), want, "{weights:?}");
    }
}

// The EDF order interleaves: with weights 1 and 3 the light host never waits
// more than one cycle, and the heavy host's turns are spread, not bunched.
#[test]
fn weighted_round_robin_is_smooth() {
    assert_eq!(weighted_sequence(&[1, 3]), Some(vec![1, 1, 0, 1]));
    assert_eq!(weighted_sequence(&[2, 3]), Some(vec![1, 0, 1, 0, 1]));
    assert_eq!(weighted_sequence(&[1, 70_000]), None);
}

// Weight sums too long to precompute run a live EDF scheduler, still in proportion.
#[test]
fn weighted_round_robin_long_cycle_uses_edf() {
    let weights = [30_001, 40_000, 50_000];
    let b = Balancer::new(&LbPolicy::RoundRobin, &weighted(&weights));
    assert!(matches!(b.kind, Kind::Edf(..)));
    let got = shares(&tally(&b, 120_001, |_| None, &all));
    assert_shares(&got, &[0.25, 0.3333, 0.4167], 0.01, "edf");
}

// Envoy builds its schedules over healthy hosts only, so the remaining hosts
// keep their relative shares; skipping must not hand a skipped host's turns
// to its neighbour.
#[test]
fn round_robin_skips_ineligible_hosts_fairly() {
    let b = Balancer::new(&LbPolicy::RoundRobin, &equal(4));
    assert_eq!(tally(&b, 300, |_| None, &|i| i != 1), vec![100, 0, 100, 100]);
    let b = Balancer::new(&LbPolicy::RoundRobin, &weighted(&[1, 2, 3]));
    assert_eq!(tally(&b, 3000, |_| None, &|i| i != 2), vec![1000, 2000, 0]);
    let b = Balancer::new(&LbPolicy::RoundRobin, &weighted(&[30_001, 40_000, 50_000]));
    let got = tally(&b, 10_000, |_| None, &|i| i != 1);
    assert_eq!(got[1], 0);
    assert_shares(&shares(&got), &[0.375, 0.0, 0.625], 0.02, "edf skipping");
}

// A heavy host that is ineligible fills most of the weighted cycle; the hosts
// left keep their relative weights (10:1), as in Envoy's schedule rebuilt over
// healthy hosts, not an even split from an unweighted fallback.
#[test]
fn weighted_balancers_keep_weights_when_a_heavy_host_is_out() {
    let hosts = weighted(&[100, 10, 1]);
    let least = LbPolicy::LeastRequest {
        choice_count: 2,
        active_request_bias: 1.0,
    };
    for policy in [LbPolicy::RoundRobin, least] {
        let b = Balancer::new(&policy, &hosts);
        let got = tally(&b, 22_000, |_| None, &|i| i != 0);
        assert_eq!(got[0], 0, "{policy:?}");
        assert_shares(
            &shares(&got),
            &[0.0, 10.0 / 11.0, 1.0 / 11.0],
            0.02,
            &format!("{policy:?} without its heavy host"),
        );
    }
}

// One balancer shared by many workers: the atomic cursor keeps counts exact.
#[test]
fn round_robin_concurrent_picks_stay_exact() {
    let b = Balancer::new(&LbPolicy::RoundRobin, &equal(3));
    let per_thread: Vec<Vec<usize>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2).map(|_| s.spawn(|| tally(&b, 3000, |_| None, &all))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let total: Vec<usize> = (0..3).map(|i| per_thread.iter().map(|c| c[i]).sum()).collect();
    assert_eq!(total, vec![2000, 2000, 2000]);
}

// Envoy N_CHOICES samples with replacement, so choice_count equal to the host
// count does not guarantee the least-loaded host; many more samples than
// hosts find it all but surely (miss chance (4/5)^64 per pick here), and
// ties go to whichever tied host was sampled first, evenly.
#[test]
fn least_request_many_choices_find_least() {
    fastrand::seed(7);
    let policy = LbPolicy::LeastRequest {
        choice_count: 64,
        active_request_bias: 1.0,
    };
    let b = Balancer::new(&policy, &equal(5));
    let active = [5u64, 3, 0, 7, 3];
    for _ in 0..100 {
        assert_eq!(b.pick(None, &|i| active[i], &all), Some(2));
    }
    let without_least = b.pick(None, &|i| active[i], &|i| i != 2);
    assert!(matches!(without_least, Some(1 | 4)), "{without_least:?}");
    let tied = [1u64, 0, 0, 1, 0];
    let mut counts = [0usize; 5];
    for _ in 0..3000 {
        counts[b.pick(None, &|i| tied[i], &all).unwrap()] += 1;
    }
    assert_eq!(counts[0] + counts[3], 0);
    for i in [1, 2, 4] {
        assert!((800..1200).contains(&counts[i]), "{counts:?}");
    }
    let b = Balancer::new(&LbPolicy::least_request(), &equal(5));
    let misses = (0..1000)
        .filter(|_| b.pick(None, &|i| active[i], &all) != Some(2))
        .count();
    assert!(
        misses > 400,
        "choice_count 2 of 5 misses the least host often: {misses}"
    );
}

// Envoy P2C (N_CHOICES, default 2): two uniform samples with replacement, the
// one with fewer active requests wins. A lone idle host among 10 busy ones is
// picked with probability 1 - 0.9^2 = 0.19; of two hosts, the idle one 0.75
// (both samples land on the busy one a quarter of the time).
#[test]
fn p2c_prefers_fewer_active_requests() {
    fastrand::seed(11);
    let b = Balancer::new(&LbPolicy::least_request(), &equal(10));
    let active = |i: usize| if i == 3 { 0 } else { 5 };
    let mut idle_host = 0;
    for _ in 0..20_000 {
        if b.pick(None, &active, &all) == Some(3) {
            idle_host += 1;
        }
    }
    let share = idle_host as f64 / 20_000.0;
    assert!((0.17..0.21).contains(&share), "{share}");

    let b = Balancer::new(&LbPolicy::least_request(), &equal(2));
    let mut second = 0;
    for _ in 0..20_000 {
        if b.pick(None, &|i| if i == 0 { 10 } else { 0 }, &all) == Some(1) {
            second += 1;
        }
    }
    let share = second as f64 / 20_000.0;
    assert!((0.73..0.77).contains(&share), "{share}");
}

// Envoy samples among healthy hosts only: ineligible samples never win.
#[test]
fn p2c_skips_ineligible() {
    fastrand::seed(3);
    let b = Balancer::new(&LbPolicy::least_request(), &equal(10));
    for _ in 0..200 {
        assert_eq!(b.pick(None, &idle, &|i| i == 7), Some(7));
        let got = b.pick(None, &|i| i as u64, &|i| i >= 5).unwrap();
        assert!(got >= 5);
    }
}

// Envoy least request with unequal weights: EDF on
// weight / (active + 1)^active_request_bias; bias 0 ignores active requests.
#[test]
fn weighted_least_request_scales_by_active_requests() {
    fastrand::seed(5);
    let cases: &[(f64, [u64; 2], [f64; 2])] = &[
        (1.0, [0, 0], [1.0 / 3.0, 2.0 / 3.0]),
        (1.0, [0, 3], [2.0 / 3.0, 1.0 / 3.0]),
        (0.0, [0, 3], [1.0 / 3.0, 2.0 / 3.0]),
        (2.0, [0, 1], [2.0 / 3.0, 1.0 / 3.0]),
        (0.5, [0, 3], [0.5, 0.5]),
        (-1.0, [0, 3], [2.0 / 3.0, 1.0 / 3.0]),
    ];
    for &(bias, active, want) in cases {
        let policy = LbPolicy::LeastRequest {
            choice_count: 2,
            active_request_bias: bias,
        };
        let b = Balancer::new(&policy, &weighted(&[1, 2]));
        assert!(matches!(b.kind, Kind::WeightedLeastRequest(..)));
        let mut counts = vec![0; 2];
        for _ in 0..30_000 {
            counts[b.pick(None, &|i| active[i], &all).unwrap()] += 1;
        }
        assert_shares(&shares(&counts), &want, 0.02, &format!("bias {bias} active {active:?}"));
    }
}

// Envoy's random balancer: uniform over the hosts, load_balancing_weight ignored.
#[test]
fn random_is_uniform_and_ignores_weights() {
    fastrand::seed(9);
    let b = Balancer::new(&LbPolicy::Random, &weighted(&[1, 9, 1, 9]));
    let got = shares(&tally(&b, 40_000, |_| None, &all));
    assert_shares(&got, &[0.25; 4], 0.015, "random");
    let got = shares(&tally(&b, 30_000, |_| None, &|i| i != 0));
    assert_shares(&got, &[0.0, 1.0 / 3.0, 1.0 / 3.0, 1.0 / 3.0], 0.015, "random skipping");
}

fn ring_of(b: &Balancer) -> Vec<(u64, u32)> {
    match &b.kind {
        Kind::Ring(ring) => ring.iter().map(|e| (e.hash, e.host)).collect(),
        other => panic!("not a ring: {other:?}"),
    }
}

// Envoy ring_hash_lb_test Basic: six hosts, minimum_ring_size 12 -> 2 entries
// each at exactly these xxHash64 positions; a hash maps to the first entry at
// or after it, wrapping past the end.
#[test]
fn ring_hash_matches_envoy_ring() {
    let hosts = ports(&[(90, 1), (91, 1), (92, 1), (93, 1), (94, 1), (95, 1)]);
    let b = Balancer::new(
        &LbPolicy::RingHash {
            min_ring_size: 12,
            max_ring_size: DEFAULT_MAX_RING_SIZE,
        },
        &hosts,
    );
    let want: Vec<(u64, u32)> = vec![
        (833437586790550860, 4),
        (928266305478181108, 2),
        (1033482794131418490, 0),
        (3551244743356806947, 5),
        (3851675632748031481, 3),
        (5583722120771150861, 1),
        (6311230543546372928, 1),
        (7700377290971790572, 3),
        (13144177310400110813, 5),
        (13444792449719432967, 2),
        (15516499411664133160, 4),
        (16117243373044804889, 0),
    ];
    assert_eq!(ring_of(&b), want);
    let picks: &[(u64, usize)] = &[
        (0, 4),
        (u64::MAX, 4),
        (3551244743356806947, 5),
        (3551244743356806948, 3),
        (16117243373044804880, 0),
    ];
    for &(hash, host) in picks {
        assert_eq!(b.pick(Some(hash), &idle, &all), Some(host), "{hash}");
    }
}

// Envoy UnevenHosts and HostWeightedTinyRing: ring size is
// ceil(min_weight * min_ring_size) / min_weight capped at max_ring_size, and
// entries follow normalized weights.
#[test]
fn ring_hash_sizes_and_weights_match_envoy() {
    let b = Balancer::new(
        &LbPolicy::RingHash {
            min_ring_size: 3,
            max_ring_size: 100,
        },
        &ports(&[(80, 1), (81, 1)]),
    );
    let want = vec![
        (5454692015285649509, 0),
        (7859399908942313493, 1),
        (13838424394637650569, 0),
        (16064866803292627174, 1),
    ];
    assert_eq!(ring_of(&b), want);

    let b = Balancer::new(
        &LbPolicy::RingHash {
            min_ring_size: 6,
            max_ring_size: 6,
        },
        &ports(&[(90, 1), (91, 2), (92, 3)]),
    );
    assert_eq!(ring_of(&b).len(), 6);
    let picks: &[(u64, usize)] = &[
        (928266305478181108, 2),
        (4443673547860492590, 2),
        (5583722120771150861, 1),
        (6311230543546372928, 1),
        (13444792449719432967, 2),
        (16117243373044804889, 0),
    ];
    for &(hash, host) in picks {
        assert_eq!(b.pick(Some(hash), &idle, &all), Some(host), "{hash}");
    }

    // 1024 / 3 hosts -> ceil(341.33) = 342 each; 10k hosts -> 1 each.
    let b = Balancer::new(&LbPolicy::ring_hash(), &equal(3));
    assert_eq!(ring_of(&b).len(), 1026);
    let b = Balancer::new(&LbPolicy::ring_hash(), &equal(10_000));
    assert_eq!(ring_of(&b).len(), 10_000);
    // Envoy quirk kept: minimum_ring_size 0 builds an empty ring, which picks nothing.
    let b = Balancer::new(
        &LbPolicy::RingHash {
            min_ring_size: 0,
            max_ring_size: 10,
        },
        &equal(3),
    );
    assert_eq!(b.pick(Some(1), &idle, &all), None);
}

// Envoy BasicWithRetryHostPredicate: a rejected host is replaced by the next
// entry along the ring (attempt k looks at entry + k).
#[test]
fn ring_hash_walks_past_ineligible_hosts() {
    let hosts = ports(&[(90, 1), (91, 1), (92, 1), (93, 1), (94, 1), (95, 1)]);
    let b = Balancer::new(
        &LbPolicy::RingHash {
            min_ring_size: 12,
            max_ring_size: 12,
        },
        &hosts,
    );
    assert_eq!(b.pick(Some(0), &idle, &all), Some(4));
    assert_eq!(b.pick(Some(0), &idle, &|i| i != 4), Some(2));
    assert_eq!(b.pick(Some(0), &idle, &|i| i != 4 && i != 2), Some(0));
    assert_eq!(b.pick(Some(u64::MAX), &idle, &|i| i != 4 && i != 2), Some(0));
    assert_eq!(b.pick(Some(16117243373044804889), &idle, &|i| i != 0), Some(4));
}

/// Fraction of `keys` whose host changes between `before` and `after`, and
/// whether every moved key went to `new_host`.
fn moved(before: &Balancer, after: &Balancer, keys: &[u64], new_host: usize) -> (f64, bool) {
    let mut moved = 0;
    let mut only_to_new = true;
    for &k in keys {
        let (a, b) = (before.pick(Some(k), &idle, &all), after.pick(Some(k), &idle, &all));
        if a != b {
            moved += 1;
            only_to_new &= b == Some(new_host);
        }
    }
    (moved as f64 / keys.len() as f64, only_to_new)
}

// Consistent hashing: the same hash always gets the same host, and adding a
// host takes over about 1/n of the keys, all of them moving to the new host.
#[test]
fn hashing_is_stable_when_hosts_are_added() {
    fastrand::seed(21);
    let keys: Vec<u64> = (0..20_000).map(|_| fastrand::u64(..)).collect();
    for (policy, max_moved) in [(LbPolicy::ring_hash(), 0.02), (LbPolicy::maglev(), 0.03)] {
        let before = Balancer::new(&policy, &equal(100));
        let after = Balancer::new(&policy, &equal(101));
        for &k in keys.iter().take(100) {
            assert_eq!(before.pick(Some(k), &idle, &all), before.pick(Some(k), &idle, &all));
        }
        let (fraction, only_to_new) = moved(&before, &after, &keys, 100);
        assert!(fraction > 0.002 && fraction < max_moved, "{policy:?}: moved {fraction}");
        if policy == LbPolicy::ring_hash() {
            assert!(only_to_new, "ring hash moved keys between old hosts");
        }
    }
}

// Ring hash and maglev give hosts slots in proportion to load_balancing_weight.
#[test]
fn hashing_respects_weights() {
    fastrand::seed(17);
    let want = [1.0 / 6.0, 2.0 / 6.0, 3.0 / 6.0];
    for (policy, tolerance) in [(LbPolicy::ring_hash(), 0.05), (LbPolicy::maglev(), 0.01)] {
        let b = Balancer::new(&policy, &weighted(&[1, 2, 3]));
        let got = shares(&tally(&b, 60_000, |_| Some(fastrand::u64(..)), &all));
        assert_shares(&got, &want, tolerance, &format!("{policy:?}"));
    }
}

// Envoy's thread-aware balancers hash at random when the request has no hash.
#[test]
fn hashing_without_a_hash_spreads_at_random() {
    fastrand::seed(23);
    for policy in [LbPolicy::ring_hash(), LbPolicy::maglev()] {
        let b = Balancer::new(&policy, &equal(4));
        let got = tally(&b, 4000, |_| None, &all);
        assert!(got.iter().all(|&c| c > 700), "{policy:?}: {got:?}");
    }
}

fn table_of(b: &Balancer) -> Vec<u32> {
    match &b.kind {
        Kind::Maglev(table) => table.clone(),
        other => panic!("not maglev: {other:?}"),
    }
}

// Envoy maglev_lb_test Basic and Weighted: the exact tables Envoy builds.
#[test]
fn maglev_matches_envoy_tables() {
    let hosts = ports(&[(90, 1), (91, 1), (92, 1), (93, 1), (94, 1), (95, 1)]);
    let b = Balancer::new(&LbPolicy::Maglev { table_size: 7 }, &hosts);
    assert_eq!(table_of(&b), vec![2, 4, 0, 1, 5, 0, 3]);
    for i in 0..21u64 {
        assert_eq!(
            b.pick(Some(i), &idle, &all),
            Some([2, 4, 0, 1, 5, 0, 3][(i % 7) as usize])
        );
    }
    let b = Balancer::new(&LbPolicy::Maglev { table_size: 17 }, &ports(&[(90, 1), (91, 2)]));
    assert_eq!(table_of(&b), vec![1, 0, 0, 1, 0, 1, 1, 0, 1, 1, 1, 1, 1, 0, 1, 0, 1]);
    // Stable under reordering of the host list (Envoy sorts by key first).
    let shuffled = ports(&[(93, 1), (95, 1), (90, 1), (94, 1), (92, 1), (91, 1)]);
    let b = Balancer::new(&LbPolicy::Maglev { table_size: 7 }, &shuffled);
    let by_port: Vec<u16> = table_of(&b)
        .iter()
        .map(|&i| [93, 95, 90, 94, 92, 91][i as usize])
        .collect();
    assert_eq!(by_port, vec![92, 94, 90, 91, 95, 90, 93]);
}

// Envoy maglev BasicWithRetryHostPredicate: hash 10 lands on host 1; attempt 1
// (hash ^ !0) gives host 0, attempt 2 (hash ^ (2^64 - 2)) host 5.
#[test]
fn maglev_passes_over_ineligible_like_envoy_retries() {
    let hosts = ports(&[(90, 1), (91, 1), (92, 1), (93, 1), (94, 1), (95, 1)]);
    let b = Balancer::new(&LbPolicy::Maglev { table_size: 7 }, &hosts);
    assert_eq!(b.pick(Some(10), &idle, &all), Some(1));
    assert_eq!(b.pick(Some(10), &idle, &|i| i != 1), Some(0));
    assert_eq!(b.pick(Some(10), &idle, &|i| i != 1 && i != 0), Some(5));
    assert_eq!(b.pick(Some(10), &idle, &|i| i == 3), Some(3));
}

// Envoy's accept-time checks, each naming the field it rejects.
#[test]
fn validate_names_envoy_fields() {
    let cases: Vec<(LbPolicy, Option<&str>)> = vec![
        (LbPolicy::RoundRobin, None),
        (LbPolicy::Random, None),
        (LbPolicy::least_request(), None),
        (
            LbPolicy::LeastRequest {
                choice_count: 1,
                active_request_bias: 1.0,
            },
            Some("least_request_lb_config.choice_count"),
        ),
        (
            LbPolicy::LeastRequest {
                choice_count: 2,
                active_request_bias: -3.0,
            },
            None,
        ),
        (LbPolicy::ring_hash(), None),
        (
            LbPolicy::RingHash {
                min_ring_size: 0,
                max_ring_size: 0,
            },
            None,
        ),
        (
            LbPolicy::RingHash {
                min_ring_size: 8_388_608,
                max_ring_size: 8_388_608,
            },
            None,
        ),
        (
            LbPolicy::RingHash {
                min_ring_size: 20,
                max_ring_size: 10,
            },
            Some("ring_hash_lb_config.minimum_ring_size (20)"),
        ),
        (
            LbPolicy::RingHash {
                min_ring_size: 1024,
                max_ring_size: 8_388_609,
            },
            Some("ring_hash_lb_config.maximum_ring_size"),
        ),
        (
            LbPolicy::RingHash {
                min_ring_size: 8_388_609,
                max_ring_size: 1 << 30,
            },
            Some("ring_hash_lb_config.minimum_ring_size"),
        ),
        (LbPolicy::maglev(), None),
        (LbPolicy::Maglev { table_size: 7 }, None),
        (LbPolicy::Maglev { table_size: 5_000_011 }, None),
        (
            LbPolicy::Maglev { table_size: 8 },
            Some("maglev_lb_config.table_size must be a prime"),
        ),
        (
            LbPolicy::Maglev { table_size: 1 },
            Some("maglev_lb_config.table_size must be a prime"),
        ),
        (
            LbPolicy::Maglev { table_size: 5_000_101 },
            Some("maglev_lb_config.table_size must not exceed"),
        ),
        (
            LbPolicy::Maglev { table_size: u64::MAX },
            Some("maglev_lb_config.table_size must not exceed"),
        ),
    ];
    for (policy, want) in cases {
        match (policy.validate(), want) {
            (Ok(()), None) => {}
            (Err(e), Some(prefix)) => assert!(e.starts_with(prefix), "{policy:?}: {e}"),
            (got, want) => panic!("{policy:?}: got {got:?}, want {want:?}"),
        }
    }
}

// Defaults as Envoy's: ROUND_ROBIN; choice_count 2, bias 1.0; ring 1024..8M; table 65537.
#[test]
fn policy_defaults_and_hash_needs() {
    assert_eq!(LbPolicy::default(), LbPolicy::RoundRobin);
    assert_eq!(
        LbPolicy::least_request(),
        LbPolicy::LeastRequest {
            choice_count: 2,
            active_request_bias: 1.0
        }
    );
    assert_eq!(
        LbPolicy::ring_hash(),
        LbPolicy::RingHash {
            min_ring_size: 1024,
            max_ring_size: 8_388_608
        }
    );
    assert_eq!(LbPolicy::maglev(), LbPolicy::Maglev { table_size: 65537 });
    let needs: Vec<bool> = policies().iter().map(LbPolicy::needs_hash).collect();
    assert_eq!(needs, vec![false, false, false, true, true]);
}

// Configs that validate() rejects still build without panicking.
#[test]
fn unvalidated_configs_do_not_panic() {
    let odd = [
        LbPolicy::Maglev { table_size: 8 },
        LbPolicy::Maglev { table_size: 0 },
        LbPolicy::RingHash {
            min_ring_size: u64::MAX,
            max_ring_size: 100,
        },
        LbPolicy::LeastRequest {
            choice_count: 0,
            active_request_bias: f64::NAN,
        },
        LbPolicy::LeastRequest {
            choice_count: 0,
            active_request_bias: f64::INFINITY,
        },
    ];
    for policy in odd {
        for hosts in [equal(3), weighted(&[1, 2, 0])] {
            let b = Balancer::new(&policy, &hosts);
            assert!(b.pick(Some(5), &|_| u64::MAX, &all).is_some(), "{policy:?}");
        }
    }
}
