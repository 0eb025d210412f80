//! Response bodies and the plain-text and JSON answers every handler shares.

use std::convert::Infallible;

use futures::channel::mpsc;
use http::{Response, StatusCode, header};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Bytes, Frame};

/// Every response body: a whole buffer or a stream a task writes into.
pub type Body = BoxBody<Bytes, std::io::Error>;

/// The sending end of a streamed body; a send fails once the client went away.
pub type BodySender = mpsc::Sender<Result<Frame<Bytes>, std::io::Error>>;

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// A body fed through the returned sender; `buffer` chunks may be queued.
pub fn channel(buffer: usize) -> (BodySender, Body) {
    let (tx, rx) = mpsc::channel(buffer);
    (tx, StreamBody::new(rx).boxed())
}

/// A plain-text answer, as upstream's `WriteErrorString`/`WriteError` send them.
pub fn text(status: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut resp = Response::new(full(message.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

pub fn json(value: &impl serde::Serialize) -> Response<Body> {
    match serde_json::to_vec(value) {
        Ok(bytes) => {
            let mut resp = Response::new(full(bytes));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                header::HeaderValue::from_static("application/json"),
            );
            resp
        }
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding JSON: {e}"),
        ),
    }
}

/// Prometheus text exposition format 0.0.4.
pub fn prometheus(text_body: String) -> Response<Body> {
    let mut resp = Response::new(full(text_body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    resp
}
