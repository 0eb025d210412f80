//! `/containerLogs/{namespace}/{pod}/{container}`: a container's CRI log file with
//! upstream's PodLogOptions (follow, tailLines, timestamps, previous, limitBytes,
//! sinceSeconds/sinceTime), streamed as the file grows when following.

use std::time::Duration;

use chrono::{DateTime, FixedOffset, Utc};
use futures::SinkExt;
use http::{Response, StatusCode};
use hyper::body::{Bytes, Frame};
use k8s_cri::v1 as cri;
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::cri_log::{self, Assembler, Line};
use super::response::{self, Body, BodySender};
use super::{Context, containers, query};

/// How often a followed log is checked for new lines.
const FOLLOW_POLL: Duration = Duration::from_millis(200);
/// How often a followed log checks whether its container still runs.
const FOLLOW_STATE_CHECK: Duration = Duration::from_secs(1);

/// PodLogOptions as the kubelet reads them from the query string.
#[derive(Debug, Default, PartialEq)]
pub struct LogOptions {
    pub follow: bool,
    pub previous: bool,
    pub timestamps: bool,
    pub tail_lines: Option<usize>,
    pub limit_bytes: Option<usize>,
    pub since: Option<DateTime<Utc>>,
}

impl LogOptions {
    /// `Err` carries upstream's status and JSON message.
    pub fn parse(query: Option<&str>) -> Result<Self, (StatusCode, &'static str)> {
        const UNDECODABLE: (StatusCode, &str) = (
            StatusCode::BAD_REQUEST,
            r#"{"message": "Unable to decode query."}"#,
        );
        const INVALID: (StatusCode, &str) = (
            StatusCode::UNPROCESSABLE_ENTITY,
            r#"{"message": "Invalid request."}"#,
        );
        let pairs = query::pairs(query);
        let flag = |name: &str| match query::first(&pairs, name) {
            None | Some("") => Ok(false),
            Some(v) => query::parse_bool(v).ok_or(UNDECODABLE),
        };
        let int = |name: &str| match query::first(&pairs, name) {
            None | Some("") => Ok(None),
            Some(v) => v.parse::<i64>().map(Some).map_err(|_| UNDECODABLE),
        };
        // The legacy `tail` parameter; `all` means no limit.
        let tail_lines = match query::first(&pairs, "tail") {
            Some("all") => None,
            Some(t) if !t.is_empty() => Some(t.parse::<i64>().map_err(|_| UNDECODABLE)?),
            _ => int("tailLines")?,
        };
        let limit_bytes = int("limitBytes")?;
        let since_seconds = int("sinceSeconds")?;
        let since_time = match query::first(&pairs, "sinceTime") {
            None | Some("") => None,
            Some(v) => Some(DateTime::parse_from_rfc3339(v).map_err(|_| UNDECODABLE)?),
        };
        // Upstream's ValidatePodLogOptions.
        if tail_lines.is_some_and(|n| n < 0)
            || limit_bytes.is_some_and(|n| n < 1)
            || since_seconds.is_some_and(|n| n < 1)
            || (since_seconds.is_some() && since_time.is_some())
        {
            return Err(INVALID);
        }
        let since = match (since_seconds, since_time) {
            (Some(s), _) => Some(Utc::now() - chrono::Duration::seconds(s)),
            (None, Some(t)) => Some(t.with_timezone(&Utc)),
            (None, None) => None,
        };
        Ok(LogOptions {
            follow: flag("follow")?,
            previous: flag("previous")?,
            timestamps: flag("timestamps")?,
            tail_lines: tail_lines.map(|n| n as usize),
            limit_bytes: limit_bytes.map(|n| n as usize),
            since,
        })
    }
}

pub async fn handle(
    context: &Context,
    namespace: &str,
    pod_name: &str,
    container: &str,
    query: Option<&str>,
) -> Response<Body> {
    let options = match LogOptions::parse(query) {
        Ok(o) => o,
        Err((status, message)) => return response::text(status, message),
    };
    let (id, log_path) =
        match log_of(context, namespace, pod_name, container, options.previous).await {
            Ok(found) => found,
            Err(resp) => return resp,
        };
    let mut file = match tokio::fs::File::open(&log_path).await {
        Ok(f) => f,
        Err(e) => {
            return response::text(
                StatusCode::BAD_REQUEST,
                format!("failed to open log file {log_path:?}: {e}"),
            );
        }
    };
    let mut existing = Vec::new();
    if let Err(e) = file.read_to_end(&mut existing).await {
        return response::text(
            StatusCode::BAD_REQUEST,
            format!("failed to read log file {log_path:?}: {e}"),
        );
    }
    let (tx, body) = response::channel(16);
    let follow = options.follow && !options.previous;
    let cri = context.cri.clone();
    tokio::spawn(async move {
        let mut writer = LogWriter::new(tx, &options);
        let mut assembler = Assembler::default();
        let (lines, consumed) = assembler.feed(&existing);
        let skip = options
            .tail_lines
            .map_or(0, |n| lines.len().saturating_sub(n));
        for line in &lines[skip..] {
            if !writer.write(line).await {
                return;
            }
        }
        if follow {
            let offset = consumed as u64;
            follow_file(
                file,
                offset,
                existing.split_off(consumed),
                assembler,
                &mut writer,
                &cri,
                &id,
            )
            .await;
        }
    });
    let mut resp = Response::new(body);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain"),
    );
    resp
}

/// The container instance whose log is asked for and its log file, or the error
/// response upstream gives (its texts, status 404 or 400).
async fn log_of(
    context: &Context,
    namespace: &str,
    pod_name: &str,
    container: &str,
    previous: bool,
) -> Result<(String, String), Response<Body>> {
    let Some(pod) = context.pods.find(namespace, pod_name) else {
        return Err(response::text(
            StatusCode::NOT_FOUND,
            format!("pod {pod_name:?} does not exist"),
        ));
    };
    if !containers::has_container(&pod, container) {
        return Err(response::text(
            StatusCode::NOT_FOUND,
            format!("container {container:?} not found in pod {pod_name:?}"),
        ));
    }
    let cri_error =
        |e: tonic::Status| response::text(StatusCode::BAD_REQUEST, e.message().to_string());
    let instances = containers::instances(&context.cri, containers::pod_uid(&pod), container)
        .await
        .map_err(cri_error)?;
    let attempt = |c: &cri::Container| c.metadata.as_ref().map_or(0, |m| m.attempt);
    let wanted = match instances.first() {
        // The previous instance is the one before the newest (restart count - 1).
        Some(newest) if previous => instances
            .iter()
            .find(|c| attempt(newest) > 0 && attempt(c) == attempt(newest) - 1),
        newest => newest.filter(|_| !previous),
    };
    let Some(instance) = wanted else {
        let message = if previous {
            format!("previous terminated container {container:?} in pod {pod_name:?} not found")
        } else {
            let reason = waiting_reason(&pod, container).unwrap_or("ContainerCreating");
            format!("container {container:?} in pod {pod_name:?} is waiting to start: {reason}")
        };
        return Err(response::text(StatusCode::BAD_REQUEST, message));
    };
    let status = containers::status(&context.cri, &instance.id)
        .await
        .map_err(cri_error)?;
    Ok((instance.id.clone(), status.log_path))
}

/// Why the pod's status says the container waits (ErrImagePull, ...), if it does.
fn waiting_reason<'a>(
    pod: &'a k8s_openapi::api::core::v1::Pod,
    container: &str,
) -> Option<&'a str> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .chain(status.init_container_statuses.iter())
        .flatten()
        .find(|s| s.name == container)?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .as_deref()
}

/// Keeps reading lines appended to the log until the container stops running or the
/// client goes away.
async fn follow_file(
    mut file: tokio::fs::File,
    mut offset: u64,
    mut pending: Vec<u8>,
    mut assembler: Assembler,
    writer: &mut LogWriter,
    cri: &crate::cri::CriClient,
    id: &str,
) {
    let mut last_check = tokio::time::Instant::now();
    let mut last_round = false;
    loop {
        if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
            return;
        }
        let mut chunk = Vec::new();
        let Ok(read) = file.read_to_end(&mut chunk).await else {
            return;
        };
        offset += read as u64;
        pending.extend_from_slice(&chunk);
        let (lines, consumed) = assembler.feed(&pending);
        pending.drain(..consumed);
        for line in &lines {
            if !writer.write(line).await {
                return;
            }
        }
        if last_round {
            return;
        }
        if read == 0 {
            if writer.closed() {
                return;
            }
            if last_check.elapsed() >= FOLLOW_STATE_CHECK {
                last_check = tokio::time::Instant::now();
                let running = containers::status(cri, id)
                    .await
                    .map(|s| s.state == cri::ContainerState::ContainerRunning as i32)
                    .unwrap_or(false);
                // One more read picks up what the container wrote before it exited.
                last_round = !running;
                continue;
            }
            tokio::time::sleep(FOLLOW_POLL).await;
        }
    }
}

/// Writes lines to the response with the options that shape each one.
struct LogWriter {
    tx: BodySender,
    timestamps: bool,
    since: Option<DateTime<Utc>>,
    bytes_left: Option<usize>,
}

impl LogWriter {
    fn new(tx: BodySender, options: &LogOptions) -> Self {
        LogWriter {
            tx,
            timestamps: options.timestamps,
            since: options.since,
            bytes_left: options.limit_bytes,
        }
    }

    fn closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// False once nothing more may be written (limit reached or client gone).
    async fn write(&mut self, line: &Line) -> bool {
        if self
            .since
            .is_some_and(|since| line.time.with_timezone(&Utc) < since)
        {
            return true;
        }
        let mut out = Vec::with_capacity(line.text.len() + 40);
        if self.timestamps {
            out.extend_from_slice(format_stamp(&line.time).as_bytes());
        }
        out.extend_from_slice(&line.text);
        if let Some(left) = self.bytes_left.as_mut() {
            out.truncate(*left);
            *left -= out.len();
        }
        let more = self.bytes_left != Some(0);
        if out.is_empty() {
            return more;
        }
        self.tx
            .send(Ok(Frame::data(Bytes::from(out))))
            .await
            .is_ok()
            && more
    }
}

fn format_stamp(time: &DateTime<FixedOffset>) -> String {
    format!("{} ", cri_log::format_time(time))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse_and_validate_as_upstream() {
        let o =
            LogOptions::parse(Some("follow=true&tailLines=5&timestamps=1&limitBytes=10")).unwrap();
        assert!(o.follow && o.timestamps && !o.previous);
        assert_eq!(o.tail_lines, Some(5));
        assert_eq!(o.limit_bytes, Some(10));
        assert_eq!(
            LogOptions::parse(Some("tail=all")).unwrap().tail_lines,
            None
        );
        assert_eq!(
            LogOptions::parse(Some("tail=3")).unwrap().tail_lines,
            Some(3)
        );
        let since = LogOptions::parse(Some("sinceTime=2020-01-01T00%3A00%3A00Z")).unwrap();
        assert_eq!(
            since.since.unwrap().to_rfc3339(),
            "2020-01-01T00:00:00+00:00"
        );
        assert_eq!(
            LogOptions::parse(Some("tailLines=-1")).unwrap_err().0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            LogOptions::parse(Some("sinceSeconds=5&sinceTime=2020-01-01T00:00:00Z"))
                .unwrap_err()
                .0,
            StatusCode::UNPROCESSABLE_ENTITY
        );
        assert_eq!(
            LogOptions::parse(Some("follow=maybe")).unwrap_err().0,
            StatusCode::BAD_REQUEST
        );
        assert_eq!(LogOptions::parse(None).unwrap(), LogOptions::default());
    }
}
