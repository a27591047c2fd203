//! HTTP/1.1 Upgrade (WebSocket): once the upstream answers 101, the two
//! upgraded connections are spliced byte for byte until either side closes.

use hyper::{body::Incoming, upgrade::OnUpgrade, Response};
use hyper_util::rt::TokioIo;

/// Takes the upgraded upstream connection out of a 101 response and splices
/// it with the downstream one, which hyper hands over once the 101 is sent.
pub fn splice(resp: &mut Response<Incoming>, downstream: OnUpgrade) {
    let upstream = hyper::upgrade::on(&mut *resp);
    tokio::spawn(async move {
        let (up, down) = match tokio::try_join!(upstream, downstream) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let mut up = TokioIo::new(up);
        let mut down = TokioIo::new(down);
        if let Err(e) = tokio::io::copy_bidirectional(&mut down, &mut up).await {
            tracing::debug!(error = %e, "upgraded connection ended with an error");
        }
    });
}
