//! Protocol detection for `codec_type: AUTO`: is this connection HTTP/2
//! prior knowledge (it opens with the h2 preface) or HTTP/1.x? Decided from
//! the first bytes, peeked so the codec still reads them. A pure function
//! over bytes, plus a peek loop.

use tokio::net::TcpStream;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    Http1,
    Http2,
}

/// Decides from a prefix of the stream; None while the prefix is still
/// consistent with the h2 preface but too short to tell.
pub fn classify(prefix: &[u8]) -> Option<Detected> {
    let n = prefix.len().min(H2_PREFACE.len());
    if prefix[..n] != H2_PREFACE[..n] {
        return Some(Detected::Http1);
    }
    (n == H2_PREFACE.len()).then_some(Detected::Http2)
}

/// Peeks until the protocol is known. A peer that closes or errors before
/// that is handed to the HTTP/1 codec, which reports it as it should.
pub async fn detect(stream: &TcpStream) -> Detected {
    let mut buf = [0u8; 24];
    let mut last = 0;
    loop {
        let n = match stream.peek(&mut buf).await {
            Ok(0) | Err(_) => return Detected::Http1,
            Ok(n) => n,
        };
        if let Some(d) = classify(&buf[..n]) {
            return d;
        }
        if n == last {
            // No new bytes since the last peek: wait for the socket to be readable again.
            if stream.readable().await.is_err() {
                return Detected::Http1;
            }
            // `readable` stays ready while unread data sits in the buffer;
            // yield so a slow preface does not spin.
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        last = n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_prefix_of_the_h2_preface_waits_and_the_whole_is_h2() {
        for i in 0..H2_PREFACE.len() {
            assert_eq!(classify(&H2_PREFACE[..i]), None, "prefix of {i} bytes");
        }
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        let mut more = H2_PREFACE.to_vec();
        more.extend_from_slice(b"\x00\x00\x12\x04");
        assert_eq!(classify(&more), Some(Detected::Http2));
    }

    #[test]
    fn http1_methods_are_http1_as_soon_as_they_diverge() {
        for req in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x HTTP/1.1\r\n",
            b"PUT / HTTP/1.1\r\n",
            b"PATCH / HTTP/1.1\r\n",
            b"PRIX",
        ] {
            // Every prefix is either undecided (still matches "PRI...") or HTTP/1.
            for i in 1..=req.len() {
                let c = classify(&req[..i]);
                assert!(c.is_none() || c == Some(Detected::Http1), "{:?}", &req[..i]);
            }
            assert_eq!(classify(req), Some(Detected::Http1), "{:?}", req);
        }
    }

    #[tokio::test]
    async fn detects_over_a_real_socket_when_the_preface_arrives_in_pieces() {
        use tokio::io::AsyncWriteExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            for chunk in H2_PREFACE.chunks(5) {
                s.write_all(chunk).await.unwrap();
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            s
        });
        let (server, _) = l.accept().await.unwrap();
        let d = tokio::time::timeout(std::time::Duration::from_secs(5), detect(&server))
            .await
            .unwrap();
        assert_eq!(d, Detected::Http2);
        drop(client.await.unwrap());
    }
}
