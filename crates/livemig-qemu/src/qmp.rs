//! An async QMP client over a unix socket: greeting, capabilities, commands with ids and
//! timeouts, and a queue of the events that arrive in between.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};
use tokio::net::UnixStream;
use tokio::time::{timeout, Instant};
use tokio_util::codec::{Framed, LinesCodec, LinesCodecError};

/// Longest line accepted from QEMU; anything longer is refused as garbage.
pub const MAX_LINE: usize = 1 << 20;
/// Default wait for the greeting and for each command's answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Events kept while nobody reads them; older ones are dropped beyond this.
pub const MAX_QUEUED_EVENTS: usize = 4096;
/// Bytes of queued events (their JSON size) kept while nobody reads them; older events are
/// dropped beyond this, whatever their count.
pub const MAX_QUEUED_EVENT_BYTES: usize = 4 << 20;

/// Why a QMP exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    #[error("cannot connect to the QMP socket {path}")]
    Connect {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QMP socket {path}: no {what} within {timeout:?}")]
    Timeout {
        path: PathBuf,
        what: String,
        timeout: Duration,
    },
    #[error("QMP socket {path} was closed while waiting for {what}")]
    Closed { path: PathBuf, what: String },
    #[error("QMP socket {path} sent something that is not a QMP message: `{line}`")]
    Garbage { path: PathBuf, line: String },
    #[error("QMP socket {path} sent a line longer than {MAX_LINE} bytes")]
    TooLong { path: PathBuf },
    #[error("QMP socket {path}: read or write failed")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("QEMU refused `{command}`: {class}: {desc}")]
    Command {
        command: String,
        class: String,
        desc: String,
    },
    #[error("QEMU's answer to `{command}` does not have the expected shape")]
    Shape {
        command: String,
        #[source]
        source: serde_json::Error,
    },
}

/// One QMP event: its name, its data and QEMU's timestamp (seconds since the epoch).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub name: String,
    pub data: Value,
    /// `None` when QEMU sent no usable timestamp.
    pub timestamp: Option<f64>,
}

impl Event {
    /// A field of the event's data as an integer.
    pub fn data_u64(&self, key: &str) -> Option<u64> {
        self.data.get(key).and_then(Value::as_u64)
    }

    /// A field of the event's data as a string.
    pub fn data_str(&self, key: &str) -> Option<&str> {
        self.data.get(key).and_then(Value::as_str)
    }
}

/// A classified line from QEMU.
#[derive(Debug, Clone, PartialEq)]
enum Message {
    Greeting,
    Event(Event),
    Return {
        id: Option<u64>,
        value: Value,
    },
    Error {
        id: Option<u64>,
        class: String,
        desc: String,
    },
}

fn classify(line: &str) -> Option<Message> {
    let v: Value = serde_json::from_str(line).ok()?;
    let obj = v.as_object()?;
    let id = obj.get("id").and_then(Value::as_u64);
    if obj.contains_key("QMP") {
        Some(Message::Greeting)
    } else if let Some(name) = obj.get("event").and_then(Value::as_str) {
        Some(Message::Event(Event {
            name: name.to_string(),
            data: obj.get("data").cloned().unwrap_or(Value::Null),
            timestamp: obj.get("timestamp").and_then(timestamp),
        }))
    } else if let Some(value) = obj.get("return") {
        Some(Message::Return {
            id,
            value: value.clone(),
        })
    } else if let Some(err) = obj.get("error") {
        let field = |k: &str| {
            err.get(k)
                .and_then(Value::as_str)
                .unwrap_or("(none)")
                .to_string()
        };
        Some(Message::Error {
            id,
            class: field("class"),
            desc: field("desc"),
        })
    } else {
        None
    }
}

fn timestamp(t: &Value) -> Option<f64> {
    let s = t.get("seconds")?.as_i64()?;
    let us = t.get("microseconds")?.as_i64()?;
    (s >= 0 && us >= 0).then_some(s as f64 + us as f64 * 1e-6)
}

fn shorten(line: &str) -> String {
    const KEEP: usize = 120;
    match line.char_indices().nth(KEEP) {
        Some((i, _)) => format!("{}...", &line[..i]),
        None => line.to_string(),
    }
}

/// Events that arrived while a command waited, bounded by count and by bytes.
#[derive(Debug, Default)]
struct EventQueue {
    events: VecDeque<(Event, usize)>,
    bytes: usize,
}

impl EventQueue {
    /// Rough size of an event as QEMU sent it (its name, data and framing).
    fn size(e: &Event) -> usize {
        e.name.len() + e.data.to_string().len() + 64
    }

    /// Appends `e`, dropping the oldest events beyond [`MAX_QUEUED_EVENTS`] or
    /// [`MAX_QUEUED_EVENT_BYTES`] (the newest event is always kept).
    fn push(&mut self, e: Event) {
        let size = Self::size(&e);
        while !self.events.is_empty()
            && (self.events.len() >= MAX_QUEUED_EVENTS
                || self.bytes + size > MAX_QUEUED_EVENT_BYTES)
        {
            if let Some((_, old)) = self.events.pop_front() {
                self.bytes -= old;
            }
        }
        self.bytes += size;
        self.events.push_back((e, size));
    }

    /// Removes and returns the first queued event that `pred` accepts.
    fn take(&mut self, mut pred: impl FnMut(&Event) -> bool) -> Option<Event> {
        let i = self.events.iter().position(|(e, _)| pred(e))?;
        let (e, size) = self.events.remove(i)?;
        self.bytes -= size;
        Some(e)
    }

    fn drain(&mut self) -> Vec<Event> {
        self.bytes = 0;
        self.events.drain(..).map(|(e, _)| e).collect()
    }
}

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct QmpClient {
    framed: Framed<UnixStream, LinesCodec>,
    path: PathBuf,
    next_id: u64,
    events: EventQueue,
    timeout: Duration,
}

impl QmpClient {
    /// Connects, reads the greeting and leaves negotiation mode (`qmp_capabilities`); every
    /// step waits at most `wait`.
    pub async fn connect(path: &Path, wait: Duration) -> Result<QmpClient, QmpError> {
        let stream = match timeout(wait, UnixStream::connect(path)).await {
            Ok(Ok(s)) => s,
            Ok(Err(source)) => {
                return Err(QmpError::Connect {
                    path: path.to_path_buf(),
                    source,
                })
            }
            Err(_) => {
                return Err(QmpError::Timeout {
                    path: path.to_path_buf(),
                    what: "connection".into(),
                    timeout: wait,
                })
            }
        };
        let mut client = QmpClient {
            framed: Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE)),
            path: path.to_path_buf(),
            next_id: 1,
            events: EventQueue::default(),
            timeout: wait,
        };
        let deadline = Instant::now() + wait;
        match client.read_message(deadline, "the QMP greeting").await? {
            Message::Greeting => {}
            other => {
                return Err(QmpError::Garbage {
                    path: client.path.clone(),
                    line: format!("expected the greeting, got {other:?}"),
                })
            }
        }
        client.execute("qmp_capabilities", None).await?;
        Ok(client)
    }

    /// The socket path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sets the wait for each later command's answer.
    pub fn set_timeout(&mut self, wait: Duration) {
        self.timeout = wait;
    }

    /// The wait for each command's answer.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn read_message(&mut self, deadline: Instant, what: &str) -> Result<Message, QmpError> {
        let path = || self.path.clone();
        let next = match tokio::time::timeout_at(deadline, self.framed.next()).await {
            Err(_) => {
                return Err(QmpError::Timeout {
                    path: path(),
                    what: what.to_string(),
                    timeout: self.timeout,
                })
            }
            Ok(n) => n,
        };
        match next {
            None => Err(QmpError::Closed {
                path: path(),
                what: what.to_string(),
            }),
            Some(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                Err(QmpError::TooLong { path: path() })
            }
            Some(Err(LinesCodecError::Io(e))) if e.kind() == std::io::ErrorKind::InvalidData => {
                Err(QmpError::Garbage {
                    path: path(),
                    line: "(bytes that are not UTF-8)".into(),
                })
            }
            Some(Err(LinesCodecError::Io(source))) => Err(QmpError::Io {
                path: path(),
                source,
            }),
            Some(Ok(line)) => classify(&line).ok_or_else(|| QmpError::Garbage {
                path: path(),
                line: shorten(&line),
            }),
        }
    }

    /// Runs `command` with optional `arguments` and returns its `return` value. Events that
    /// arrive meanwhile are queued for [`QmpClient::next_event`].
    pub async fn execute(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = Map::new();
        msg.insert("execute".into(), json!(command));
        if let Some(a) = arguments {
            msg.insert("arguments".into(), a);
        }
        msg.insert("id".into(), json!(id));
        let line = Value::Object(msg).to_string();
        let deadline = Instant::now() + self.timeout;
        let what = format!("the answer to `{command}`");
        match tokio::time::timeout_at(deadline, self.framed.send(line)).await {
            Err(_) => {
                return Err(QmpError::Timeout {
                    path: self.path.clone(),
                    what,
                    timeout: self.timeout,
                })
            }
            Ok(Err(LinesCodecError::Io(source))) => {
                return Err(if source.kind() == std::io::ErrorKind::BrokenPipe {
                    QmpError::Closed {
                        path: self.path.clone(),
                        what,
                    }
                } else {
                    QmpError::Io {
                        path: self.path.clone(),
                        source,
                    }
                })
            }
            Ok(Err(LinesCodecError::MaxLineLengthExceeded)) => {
                return Err(QmpError::TooLong {
                    path: self.path.clone(),
                })
            }
            Ok(Ok(())) => {}
        }
        loop {
            match self.read_message(deadline, &what).await? {
                Message::Event(e) => self.events.push(e),
                Message::Return {
                    id: Some(got),
                    value,
                } if got == id => return Ok(value),
                // QEMU answers without an id when it could not read the request's id (a JSON
                // parse error): it concerns the one command outstanding, this one.
                Message::Error {
                    id: got,
                    class,
                    desc,
                } if got.is_none_or(|g| g == id) => {
                    return Err(QmpError::Command {
                        command: command.to_string(),
                        class,
                        desc,
                    })
                }
                // An answer to an earlier command that timed out, or a stray greeting.
                _ => {}
            }
        }
    }

    /// Runs `command` and decodes its answer into `T`.
    pub async fn execute_as<T: DeserializeOwned>(
        &mut self,
        command: &str,
        arguments: Option<Value>,
    ) -> Result<T, QmpError> {
        let v = self.execute(command, arguments).await?;
        serde_json::from_value(v).map_err(|source| QmpError::Shape {
            command: command.to_string(),
            source,
        })
    }

    /// The next event, waiting at most `wait`; `Ok(None)` when none came in time.
    pub async fn next_event(&mut self, wait: Duration) -> Result<Option<Event>, QmpError> {
        self.take_event(|_| true, wait).await
    }

    /// The first event `pred` accepts, queued or arriving within `wait`; events it does not
    /// accept stay queued in order. `Ok(None)` when none came in time.
    pub async fn take_event(
        &mut self,
        mut pred: impl FnMut(&Event) -> bool,
        wait: Duration,
    ) -> Result<Option<Event>, QmpError> {
        if let Some(e) = self.events.take(&mut pred) {
            return Ok(Some(e));
        }
        let deadline = Instant::now() + wait;
        loop {
            match self.read_message(deadline, "an event").await {
                Ok(Message::Event(e)) if pred(&e) => return Ok(Some(e)),
                Ok(Message::Event(e)) => self.events.push(e),
                Ok(_) => {}
                Err(QmpError::Timeout { .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes every queued event without waiting.
    pub fn drain_events(&mut self) -> Vec<Event> {
        self.events.drain()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_every_kind_of_line() {
        assert_eq!(
            classify(r#"{"QMP": {"version": {}, "capabilities": []}}"#),
            Some(Message::Greeting)
        );
        let Some(Message::Event(e)) = classify(
            r#"{"timestamp": {"seconds": 10, "microseconds": 500000}, "event": "MIGRATION_PASS", "data": {"pass": 3}}"#,
        ) else {
            panic!("not an event")
        };
        assert_eq!(e.name, "MIGRATION_PASS");
        assert_eq!(e.data_u64("pass"), Some(3));
        assert_eq!(e.timestamp, Some(10.5));
        assert_eq!(
            classify(r#"{"return": {}, "id": 7}"#),
            Some(Message::Return {
                id: Some(7),
                value: json!({})
            })
        );
        assert_eq!(
            classify(r#"{"error": {"class": "GenericError", "desc": "no"}, "id": 2}"#),
            Some(Message::Error {
                id: Some(2),
                class: "GenericError".into(),
                desc: "no".into()
            })
        );
        assert_eq!(classify("hello"), None);
        assert_eq!(classify("[1,2]"), None);
        assert_eq!(classify(r#"{"something": 1}"#), None);
    }

    #[test]
    fn negative_timestamps_are_dropped() {
        let Some(Message::Event(e)) =
            classify(r#"{"timestamp": {"seconds": -1, "microseconds": -1}, "event": "STOP"}"#)
        else {
            panic!("not an event")
        };
        assert_eq!(e.timestamp, None);
        assert_eq!(e.data, Value::Null);
    }

    fn ev(name: &str, data: Value) -> Event {
        Event {
            name: name.into(),
            data,
            timestamp: None,
        }
    }

    #[test]
    fn the_event_queue_is_bounded_by_bytes_not_only_by_count() {
        let mut q = EventQueue::default();
        let big = json!("x".repeat(1 << 20));
        for i in 0..10 {
            q.push(ev(&format!("E{i}"), big.clone()));
            assert!(
                q.bytes <= MAX_QUEUED_EVENT_BYTES,
                "{} bytes queued",
                q.bytes
            );
        }
        assert!(q.events.len() < 10, "old events were dropped");
        let names: Vec<String> = q.drain().into_iter().map(|e| e.name).collect();
        assert_eq!(
            names.last().map(String::as_str),
            Some("E9"),
            "the newest is kept"
        );
        assert_eq!(q.bytes, 0);
        // Small events are bounded by count.
        for _ in 0..MAX_QUEUED_EVENTS + 10 {
            q.push(ev("STOP", Value::Null));
        }
        assert_eq!(q.events.len(), MAX_QUEUED_EVENTS);
    }

    #[test]
    fn take_keeps_the_other_events_in_order() {
        let mut q = EventQueue::default();
        q.push(ev("A", Value::Null));
        q.push(ev("MIGRATION_PASS", json!({"pass": 3})));
        q.push(ev("B", Value::Null));
        let e = q.take(|e| e.name == "MIGRATION_PASS").expect("found");
        assert_eq!(e.data_u64("pass"), Some(3));
        assert!(q.take(|e| e.name == "MIGRATION_PASS").is_none());
        assert_eq!(q.take(|_| true).map(|e| e.name), Some("A".into()));
        assert_eq!(q.take(|_| true).map(|e| e.name), Some("B".into()));
        assert_eq!(q.bytes, 0);
    }

    #[test]
    fn long_garbage_is_shortened() {
        let s = shorten(&"x".repeat(1000));
        assert!(s.len() < 130 && s.ends_with("..."));
    }
}
