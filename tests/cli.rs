//! The `remora` binary as users run it: help on every subcommand, exit codes
//! that mean something, `check` naming the field path of every error, and
//! drain on SIGTERM / `/quitquitquit` finishing requests in flight.

mod common;

use std::{
    io::{BufRead, BufReader, Read},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use common::*;

const BIN: &str = env!("CARGO_BIN_EXE_remora");

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(BIN).args(args).output().expect("run remora");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

fn write_config(name: &str, yaml: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("remora-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, yaml).unwrap();
    path
}

#[test]
fn help_on_every_subcommand() {
    for args in [
        &["--help"][..],
        &["run", "--help"],
        &["check", "--help"],
        &["demo", "--help"],
    ] {
        let (code, text) = run(args);
        assert_eq!(code, 0, "{args:?}: {text}");
        assert!(text.contains("Usage"), "{args:?}: {text}");
    }
    let (code, text) = run(&["run", "--config", "x.yaml", "--concurrency", "0"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--concurrency"), "{text}");
    let (code, text) = run(&["run", "--no-such-flag"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--no-such-flag"), "{text}");
    let (code, text) = run(&["--log-level", "loud", "check", "--config", "x"]);
    assert_eq!(code, 2, "{text}");
}

fn base(route: &str, cluster_extra: &str) -> String {
    format!(
        r#"static_resources:
  listeners:
  - name: http
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress_http
          route_config:
            virtual_hosts:
            - name: a
              domains: ["*"]
              routes:
              - match: {{ prefix: / }}
                {route}
            - name: b
              domains: ["b.example"]
              routes:
              - match: {{ prefix: /x }}
                route: {{ cluster: backend }}
              - match: {{ prefix: /y }}
                route: {{ cluster: backend }}
              - match: {{ prefix: /z }}
                route: {{ cluster: backend }}
              - match: {{ safe_regex: {{ regex: "/ok/[0-9]+" }} }}
                route: {{ cluster: backend }}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{ "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router }}
  clusters:
  - name: backend
    connect_timeout: 1s{cluster_extra}
    load_assignment:
      cluster_name: backend
      endpoints:
      - lb_endpoints:
        - endpoint: {{ address: {{ socket_address: {{ address: 127.0.0.1, port_value: 9 }} }} }}
"#
    )
}

#[test]
fn check_accepts_a_valid_config() {
    let path = write_config("ok.yaml", &base("route: { cluster: backend }", ""));
    let (code, text) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("OK (1 listeners, 1 clusters)"), "{text}");
}

#[test]
fn check_names_the_field_path_of_each_error() {
    const HCM: &str = "static_resources.listeners[0].filter_chains[0].filters[0].typed_config";
    let cases: Vec<(&str, String, String)> = vec![
        (
            "dangling cluster",
            base("route: { cluster: nowhere }", ""),
            format!("{HCM}.route_config.virtual_hosts[0].routes[0].route.cluster: unknown cluster 'nowhere'"),
        ),
        (
            "invalid regex",
            base("route: { cluster: backend }", "").replace("/ok/[0-9]+", "/ok/[0-9"),
            format!("{HCM}.route_config.virtual_hosts[1].routes[3].match.safe_regex.regex: invalid regex"),
        ),
        (
            "unknown @type",
            base("route: { cluster: backend }", "").replace(
                "envoy.extensions.filters.http.router.v3.Router",
                "envoy.extensions.filters.http.nope.v3.Nope",
            ),
            format!("{HCM}.http_filters[0].typed_config: unknown @type 'type.googleapis.com/envoy.extensions.filters.http.nope.v3.Nope'"),
        ),
        (
            "unsupported field that changes behaviour",
            base("route: { cluster: backend }", "\n    upstream_bind_config: { source_address: { address: 127.0.0.2, port_value: 0 } }"),
            "static_resources.clusters[0].upstream_bind_config: not supported by remora yet (Cluster.upstream_bind_config)".to_string(),
        ),
        (
            "unsupported filter",
            base("route: { cluster: backend }", "").replace(
                "          http_filters:\n",
                "          http_filters:\n          - name: envoy.filters.http.cors\n            typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.http.cors.v3.Cors }\n",
            ),
            format!("{HCM}.http_filters[0].typed_config: HTTP filter 'envoy.filters.http.cors' (envoy.extensions.filters.http.cors.v3.Cors) is not supported yet"),
        ),
        (
            "unknown field",
            base("route: { cluster: backend }", "\n    conect_timeout: 1s"),
            "static_resources.clusters[0]: unrecognized field name 'conect_timeout'".to_string(),
        ),
        (
            "negative duration",
            base("route: { cluster: backend, timeout: -1s }", ""),
            format!("{HCM}.route_config.virtual_hosts[0].routes[0].route.timeout: duration must not be negative"),
        ),
        (
            "weights add up to zero",
            base("route: { weighted_clusters: { clusters: [ { name: backend, weight: 0 } ] } }", ""),
            format!("{HCM}.route_config.virtual_hosts[0].routes[0].route.weighted_clusters.clusters: weights add up to zero"),
        ),
    ];
    for (name, yaml, expected) in cases {
        let path = write_config(&format!("{}.yaml", name.replace(' ', "_")), &yaml);
        let (code, text) = run(&["check", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "{name}: {text}");
        assert!(text.contains(&expected), "{name}: expected\n  {expected}\ngot\n{text}");
    }
    // Every error is printed, not only the first.
    let both = base(
        "route: { cluster: nowhere }",
        "\n    upstream_bind_config: {}\n    outlier_detection: { max_ejection_percent: 101 }",
    );
    let path = write_config("many.yaml", &both);
    let (code, text) = run(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(text.contains("INVALID (3 errors)"), "{text}");
}

#[test]
fn run_with_an_invalid_or_missing_config_exits_2() {
    let (code, text) = run(&["run", "--config", "/nonexistent/remora.yaml"]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("cannot read /nonexistent/remora.yaml"), "{text}");
    let path = write_config("bad-run.yaml", &base("route: { cluster: nowhere }", ""));
    let (code, text) = run(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("unknown cluster 'nowhere'"), "{text}");
}

/// A running `remora run` child, killed on drop.
struct Running {
    child: Child,
    listener: SocketAddr,
    admin: SocketAddr,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_proxy(yaml: &str, name: &str) -> Running {
    let path = write_config(name, yaml);
    let mut child = Command::new(BIN)
        .args([
            "run",
            "--config",
            path.to_str().unwrap(),
            "--concurrency",
            "1",
            "--drain-timeout",
            "5",
        ])
        .env("REMORA_LOG", "remora=info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn remora");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The readiness signal: the proxy logs each bound address.
    let (mut listener, mut admin) = (None, None);
    let deadline = std::time::Instant::now() + WAIT;
    while listener.is_none() || admin.is_none() {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("remora did not report its addresses"));
        let line = strip_ansi(&line);
        let addr = line
            .split("address=")
            .nth(1)
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.parse().ok());
        if line.contains("admin listening") {
            admin = addr;
        } else if line.contains("listening") {
            listener = addr;
        }
    }
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Running {
        child,
        listener: listener.unwrap(),
        admin: admin.unwrap(),
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn wait_exit(child: &mut Child) -> i32 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code().unwrap_or(-1);
        }
        assert!(std::time::Instant::now() < deadline, "remora did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn proxied_config(up: SocketAddr) -> String {
    let hcm = "route_config:\n  virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n    - match: { prefix: / }\n      route: { cluster: up }";
    http_bootstrap(hcm, &cluster("up", &[up], false, ""))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_0() {
    let up = upstream("up").await;
    let mut p = spawn_proxy(&proxied_config(up.addr), "drain.yaml");
    let mut admin = H1::connect(p.admin).await;
    assert_eq!(admin.get("a", "/ready").await.status, 200);

    let addr = p.listener;
    let in_flight = tokio::spawn(async move {
        let mut c = H1::connect(addr).await;
        c.get("x", "/slow/700").await
    });
    // The request is in flight once the upstream has accepted its connection.
    eventually("request reached the upstream", || async {
        (up.accepts.load(std::sync::atomic::Ordering::SeqCst) > 0).then_some(())
    })
    .await;
    // SAFETY: kill(2) with a child pid we own and a valid signal number.
    let rc = unsafe { libc::kill(p.child.id() as i32, libc::SIGTERM) };
    assert_eq!(rc, 0);
    let r = within("in-flight request", in_flight).await.unwrap();
    assert_eq!(r.status, 200, "the in-flight request finished");
    let code = tokio::task::spawn_blocking(move || {
        let c = wait_exit(&mut p.child);
        (c, p)
    })
    .await
    .unwrap();
    assert_eq!(code.0, 0);
    // The listener is gone: new connections are refused.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quitquitquit_stops_the_proxy() {
    let up = upstream("up").await;
    let mut p = spawn_proxy(&proxied_config(up.addr), "quit.yaml");
    let mut admin = H1::connect(p.admin).await;
    // GET is refused: it would be too easy to trigger by accident.
    assert_eq!(admin.get("a", "/quitquitquit").await.status, 405);
    let req = http::Request::post("/quitquitquit")
        .header("host", "a")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(admin.send(req).await.status, 200);
    let code = tokio::task::spawn_blocking(move || wait_exit(&mut p.child))
        .await
        .unwrap();
    assert_eq!(code, 0);
}

#[test]
fn a_port_in_use_exits_1_naming_the_listener() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let yaml =
        proxied_config("127.0.0.1:9".parse().unwrap()).replacen("port_value: 0", &format!("port_value: {port}"), 2);
    // Both the admin and the listener ask for the taken port; whichever binds first fails.
    let path = write_config("busy.yaml", &yaml);
    let (code, text) = run(&["run", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("cannot bind"), "{text}");
}

/// Runs `remora demo` (bounded: it is killed after `DEMO_WAIT`) and returns its exit code and output.
fn run_demo() -> (i32, String) {
    const DEMO_WAIT: Duration = Duration::from_secs(60);
    let mut child = Command::new(BIN)
        .arg("demo")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn remora demo");
    let read = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_string(&mut text);
            }
            text
        })
    };
    let out = read(child.stdout.take().map(|p| Box::new(p) as _));
    let err = read(child.stderr.take().map(|p| Box::new(p) as _));
    let deadline = std::time::Instant::now() + DEMO_WAIT;
    let code = loop {
        if let Ok(Some(status)) = child.try_wait() {
            break status.code().unwrap_or(-1);
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("remora demo did not finish within {DEMO_WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let text = format!("{}{}", out.join().unwrap_or_default(), err.join().unwrap_or_default());
    (code, text)
}

/// `remora demo` shows Envoy's traffic policy at work on the fixture's config
/// (xds-fixtures/demo), each scene with its own verdict and the exit code 0
/// only when all pass: the weighted split (80/20, then 20/80 after an xDS
/// update) within tolerance; `outlier_detection.consecutive_5xx` ejecting a
/// failing instance at its 5th 503 so that it gets nothing afterwards; a
/// `retry_policy` with `previous_hosts` hiding a flaky instance's 503s and
/// resets from every client; `circuit_breakers` `max_requests` letting 10 of
/// a 40-request burst through and answering the rest 503 with
/// `x-envoy-overloaded: true` at once; and remora's counters agreeing with
/// what the sample instances counted.
#[test]
fn demo_shows_each_policy_at_work() {
    let (code, text) = run_demo();
    assert_eq!(code, 0, "{text}");
    for scene in [
        "weighted split",
        "outlier detection",
        "retries",
        "circuit breaker",
        "counters",
    ] {
        assert!(text.contains(&format!("verdict ({scene}): OK")), "{scene}:\n{text}");
    }
    // What each verdict was made of, as the demo reports it.
    for measured in [
        "v2-b answered 503 to the 5 requests it got",
        "then got 0 of the",
        "outlier_detection_ejections_active 1",
        "clients saw 0 errors",
        "upstream_rq_retry_overflow 0",
        "10 at details, 30 answered, 30 of them 503 x-envoy-overloaded",
    ] {
        assert!(text.contains(measured), "{measured}:\n{text}");
    }
    assert!(text.contains("\nOK: "), "{text}");
}
