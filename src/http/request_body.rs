//! The body of every request remora sends upstream: the downstream body
//! streamed through, a copy held for replay so a retry can send it again, or
//! a mirror's copy. One enum, not a box per request.
//!
//! The downstream body is read through [`Downstream`], which tells the
//! stream's timers about each frame and feeds the request's mirrors.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::{body::BoxError, mirror, stream_timers::StreamTimers};

pub enum RequestBody {
    /// Streamed from the downstream as it arrives.
    Stream(Downstream),
    /// Held whole in memory (empty for a bodiless request), with its
    /// trailers if it had any; cheap to clone.
    Replay(Option<Bytes>, Option<http::HeaderMap>),
    /// What was read before the replay limit was passed, then the rest of the stream.
    Prefixed(Option<Bytes>, Downstream),
    /// A mirror's copy of the downstream body, as the primary request reads it.
    Mirror(mirror::MirrorBody),
}

/// The downstream request body, watched as it is read: each frame restarts
/// the stream's idle timer and goes to the request's mirrors, and the end
/// marks the request complete.
pub struct Downstream {
    inner: Incoming,
    timers: Option<StreamTimers>,
    mirrors: Option<mirror::Tee>,
}

impl Downstream {
    pub fn new(inner: Incoming, timers: Option<StreamTimers>, mirrors: Option<mirror::Tee>) -> Downstream {
        let mut body = Downstream { inner, timers, mirrors };
        if body.inner.is_end_stream() {
            body.ended();
        }
        body
    }

    /// A body nothing watches.
    pub fn plain(inner: Incoming) -> Downstream {
        Downstream::new(inner, None, None)
    }

    fn ended(&mut self) {
        if let Some(t) = &self.timers {
            t.complete_request();
        }
        if let Some(m) = self.mirrors.take() {
            m.end();
        }
    }
}

impl Body for Downstream {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let frame = std::task::ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let Some(t) = &this.timers {
                    t.touch();
                }
                if let Some(m) = &mut this.mirrors {
                    m.frame(f);
                }
                if this.inner.is_end_stream() || f.is_trailers() {
                    this.ended();
                }
            }
            None => this.ended(),
            // The mirrors see the stream cut (the tee dropped) and reset theirs.
            Some(Err(_)) => this.mirrors = None,
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl RequestBody {
    /// A copy for another attempt, when the body is held whole.
    pub fn replay(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Replay(b, t) => Some(RequestBody::Replay(b.clone(), t.clone())),
            _ => None,
        }
    }
}

/// Reads a request body for replay, up to `limit` bytes. A body that ends
/// within the limit comes back whole (`Replay`); a longer one comes back as
/// what was read plus the rest of the stream (`Prefixed`), to be sent once.
pub async fn buffer_for_replay(mut body: Downstream, limit: usize) -> Result<RequestBody, hyper::Error> {
    if body.is_end_stream() {
        return Ok(RequestBody::Replay(None, None));
    }
    let mut held = bytes::BytesMut::new();
    let whole = |held: bytes::BytesMut| (!held.is_empty()).then(|| held.freeze());
    loop {
        let Some(frame) = body.frame().await.transpose()? else {
            return Ok(RequestBody::Replay(whole(held), None));
        };
        match frame.into_data() {
            Ok(data) => {
                held.extend_from_slice(&data);
                if held.len() > limit {
                    return Ok(RequestBody::Prefixed(Some(held.freeze()), body));
                }
                if body.is_end_stream() {
                    return Ok(RequestBody::Replay(whole(held), None));
                }
            }
            // Trailers end the body.
            Err(frame) => return Ok(RequestBody::Replay(whole(held), frame.into_trailers().ok())),
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut *self {
            RequestBody::Stream(inner) => Pin::new(inner).poll_frame(cx).map_err(Into::into),
            RequestBody::Replay(b, t) => Poll::Ready(
                b.take()
                    .map(|b| Ok(Frame::data(b)))
                    .or_else(|| t.take().map(|t| Ok(Frame::trailers(t)))),
            ),
            RequestBody::Prefixed(head, rest) => match head.take() {
                Some(b) => Poll::Ready(Some(Ok(Frame::data(b)))),
                None => Pin::new(rest).poll_frame(cx).map_err(Into::into),
            },
            RequestBody::Mirror(copy) => Pin::new(copy).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Stream(inner) => inner.is_end_stream(),
            RequestBody::Replay(b, t) => b.is_none() && t.is_none(),
            RequestBody::Prefixed(head, rest) => head.is_none() && rest.is_end_stream(),
            RequestBody::Mirror(copy) => copy.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Stream(inner) => inner.size_hint(),
            RequestBody::Replay(b, _) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RequestBody::Prefixed(head, rest) => {
                let extra = head.as_ref().map_or(0, |b| b.len() as u64);
                let inner = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + extra);
                if let Some(u) = inner.upper() {
                    hint.set_upper(u + extra);
                }
                hint
            }
            RequestBody::Mirror(copy) => copy.size_hint(),
        }
    }
}
