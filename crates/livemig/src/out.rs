//! Fallible output: what a command prints goes through here, so a full disk or a closed pipe
//! is an error the command returns, never a panic (`println!` panics on both).
//!
//! A reader that went away (`EPIPE`, e.g. `livemig bench | head`) is [`OutputError::Closed`]:
//! `main` ends quietly with status 0 on it, as `ripgrep` does. Any other failure is
//! [`OutputError::Write`], reported as one line with the usual error status.

use std::fmt;
use std::io::{self, Write};

/// Why standard output could not take a command's output.
#[derive(Debug)]
pub enum OutputError {
    /// The reader closed its end of the pipe: nobody wants the rest.
    Closed,
    /// Any other write error (`ENOSPC` on `> /dev/full`, `EIO`, ...).
    Write(io::Error),
}

impl fmt::Display for OutputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutputError::Closed => "the reader of standard output went away",
            OutputError::Write(_) => "cannot write to standard output",
        })
    }
}

impl std::error::Error for OutputError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            OutputError::Closed => None,
            OutputError::Write(e) => Some(e),
        }
    }
}

impl From<io::Error> for OutputError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            OutputError::Closed
        } else {
            OutputError::Write(e)
        }
    }
}

/// Writes `text` to `w` exactly as given and flushes it.
pub fn emit_to(w: &mut impl Write, text: &str) -> Result<(), OutputError> {
    w.write_all(text.as_bytes())?;
    w.flush()?;
    Ok(())
}

/// Writes `text` to standard output exactly as given (no newline added) and flushes it.
pub fn emit(text: &str) -> Result<(), OutputError> {
    emit_to(&mut io::stdout().lock(), text)
}

/// Writes `text` and a newline to standard output and flushes it: a fallible `println!`.
pub fn emit_line(text: &str) -> Result<(), OutputError> {
    let mut out = io::stdout().lock();
    out.write_all(text.as_bytes())?;
    emit_to(&mut out, "\n")
}

/// Writes `text` and a newline to standard error, best effort: progress and notes must not
/// end a command (or panic, as `eprintln!` does) when standard error is unusable.
pub fn note(text: &str) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// Whether `e` is, or was caused by, a reader that closed standard output.
pub fn reader_went_away(e: &anyhow::Error) -> bool {
    e.chain()
        .any(|c| matches!(c.downcast_ref::<OutputError>(), Some(OutputError::Closed)))
}

/// An error and its causes on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut why = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        why.push_str(": ");
        why.push_str(&c.to_string());
        cause = c.source();
    }
    why
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that fails every write with `kind`.
    struct Failing(io::ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(self.0.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn write_errors_are_typed_not_panics() {
        let e = emit_to(&mut Failing(io::ErrorKind::BrokenPipe), "x").expect_err("fails");
        assert!(matches!(e, OutputError::Closed), "{e:?}");
        let e = emit_to(&mut Failing(io::ErrorKind::Other), "x").expect_err("fails");
        assert!(matches!(e, OutputError::Write(_)), "{e:?}");
        let mut buf = Vec::new();
        emit_to(&mut buf, "a\nb").expect("a Vec takes anything");
        assert_eq!(buf, b"a\nb");
    }

    #[test]
    fn only_a_closed_reader_is_quiet() {
        let closed = anyhow::Error::from(OutputError::Closed).context("printing the table");
        assert!(reader_went_away(&closed));
        let full = anyhow::Error::from(OutputError::Write(io::ErrorKind::Other.into()));
        assert!(!reader_went_away(&full));
        assert!(!reader_went_away(&anyhow::anyhow!("other")));
    }
}
