//! L4 forwarding through `tcp_proxy`, and WebSocket upgrades through the HTTP
//! connection manager: bytes both ways, long-lived, and closed as Envoy would.

mod common;

use std::time::Duration;

use common::*;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

/// A TCP server that prefixes every chunk it receives with "echo:".
async fn tcp_echo() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let mut out = b"echo:".to_vec();
                            out.extend_from_slice(&buf[..n]);
                            if s.write_all(&out).await.is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    addr
}

fn tcp_bootstrap(clusters: &str, proxy_body: &str) -> String {
    format!(
        r#"static_resources:
  listeners:
  - name: tcp
    address: {{ socket_address: {{ address: 127.0.0.1, port_value: 0 }} }}
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
{body}
  clusters:
{clusters}"#,
        body = indent(proxy_body, 10)
    )
}

async fn read_some(s: &mut TcpStream) -> String {
    let mut buf = vec![0u8; 4096];
    let n = within("tcp read", s.read(&mut buf)).await.expect("read");
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test]
async fn tcp_proxy_forwards_both_ways() {
    let echo = tcp_echo().await;
    let p = proxy(&tcp_bootstrap(&cluster("echo", &[echo], false, ""), "cluster: echo")).await;
    let mut s = TcpStream::connect(p.listener("tcp").unwrap()).await.unwrap();
    for i in 0..3 {
        s.write_all(format!("ping{i}").as_bytes()).await.unwrap();
        assert_eq!(read_some(&mut s).await, format!("echo:ping{i}"));
    }
}

#[tokio::test]
async fn tcp_proxy_weighted_clusters_and_idle_timeout() {
    let echo = tcp_echo().await;
    let closed = closed_port().await;
    let clusters = cluster("echo", &[echo], false, "") + &cluster("closed", &[closed], false, "");
    let body = "weighted_clusters:\n  clusters:\n  - { name: echo, weight: 1 }\n  - { name: closed, weight: 0 }\nidle_timeout: 0.3s";
    let p = proxy(&tcp_bootstrap(&clusters, body)).await;
    let mut s = TcpStream::connect(p.listener("tcp").unwrap()).await.unwrap();
    s.write_all(b"hi").await.unwrap();
    assert_eq!(read_some(&mut s).await, "echo:hi");
    // Idle past the timeout: the proxy closes the connection (reads EOF).
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = within("idle close", s.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn tcp_proxy_closes_downstream_when_upstream_is_down() {
    let closed = closed_port().await;
    let p = proxy(&tcp_bootstrap(
        &cluster("closed", &[closed], false, ""),
        "cluster: closed",
    ))
    .await;
    let mut s = TcpStream::connect(p.listener("tcp").unwrap()).await.unwrap();
    let mut buf = [0u8; 16];
    let n = within("close on connect failure", s.read(&mut buf)).await.unwrap_or(0);
    assert_eq!(n, 0);
}

fn ws_bootstrap(up: std::net::SocketAddr, upgrades: bool) -> String {
    let upgrade = if upgrades {
        "upgrade_configs:\n- upgrade_type: websocket\n"
    } else {
        ""
    };
    let hcm = format!(
        "{upgrade}route_config:\n  virtual_hosts:\n  - name: all\n    domains: [\"*\"]\n    routes:\n    - match: {{ prefix: / }}\n      route: {{ cluster: ws }}"
    );
    http_bootstrap(&hcm, &cluster("ws", &[up], false, ""))
}

const UPGRADE: &[u8] = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

#[tokio::test]
async fn websocket_upgrade_is_proxied_with_frames_both_ways() {
    let up = upstream("ws").await;
    let p = proxy(&ws_bootstrap(up.addr, true)).await;
    let mut s = TcpStream::connect(p.listener("http").unwrap()).await.unwrap();
    s.write_all(UPGRADE).await.unwrap();
    let head = read_some(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head:?}");
    assert!(head.to_ascii_lowercase().contains("upgrade: websocket"), "{head:?}");
    // After the 101, bytes flow both ways for as long as the peers like.
    for i in 0..5 {
        s.write_all(format!("frame-{i}").as_bytes()).await.unwrap();
        assert_eq!(read_some(&mut s).await, format!("FRAME-{i}"));
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test]
async fn upgrade_without_upgrade_config_is_403() {
    let up = upstream("ws").await;
    let p = proxy(&ws_bootstrap(up.addr, false)).await;
    let reply = raw_head(p.listener("http").unwrap(), UPGRADE).await;
    // As Envoy: an upgrade the connection manager is not configured for is refused.
    assert!(reply.starts_with("HTTP/1.1 403"), "{reply:?}");
}
