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

/// A connected, negotiated QMP session.
#[derive(Debug)]
pub struct QmpClient {
    framed: Framed<UnixStream, LinesCodec>,
    path: PathBuf,
    next_id: u64,
    events: VecDeque<Event>,
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
            events: VecDeque::new(),
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

    fn queue(&mut self, e: Event) {
        if self.events.len() >= MAX_QUEUED_EVENTS {
            self.events.pop_front();
        }
        self.events.push_back(e);
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
                Message::Event(e) => self.queue(e),
                Message::Return {
                    id: Some(got),
                    value,
                } if got == id => return Ok(value),
                Message::Error {
                    id: Some(got),
                    class,
                    desc,
                } if got == id => {
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
        if let Some(e) = self.events.pop_front() {
            return Ok(Some(e));
        }
        let deadline = Instant::now() + wait;
        loop {
            match self.read_message(deadline, "an event").await {
                Ok(Message::Event(e)) => return Ok(Some(e)),
                Ok(_) => {}
                Err(QmpError::Timeout { .. }) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// Takes every queued event without waiting.
    pub fn drain_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
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

    #[test]
    fn long_garbage_is_shortened() {
        let s = shorten(&"x".repeat(1000));
        assert!(s.len() < 130 && s.ends_with("..."));
    }
}
