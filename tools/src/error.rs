//! [`CtlError`]: every way a `krakenctl` command fails, and the exit code each one maps to.
//!
//! Scripts rely on the codes (see [`exit`]); the message is one line for people.

use kraken_client::cluster::CallError;
use kraken_client::download::DownloadError;
use kraken_client::proto::ErrorKind;

/// Process exit codes of `krakenctl`.
pub mod exit {
    /// The command did what was asked.
    pub const OK: u8 = 0;
    /// Any other failure (a node answered with an internal error, a transfer broke, …).
    pub const FAILED: u8 = 1;
    /// Usage: bad flags (clap), or no way to connect was given (no CA, certificate or seed).
    pub const USAGE: u8 = 2;
    /// The seed or another node of the cluster could not be reached.
    pub const UNREACHABLE: u8 = 3;
    /// A bad digest, tag, address, file or other argument.
    pub const BAD_ARGUMENT: u8 = 4;
    /// Not found: no origin holds the blob, the tag or repository is unknown, an agent has
    /// no pull of it on record, or a node answered `NotFound`.
    pub const NOT_FOUND: u8 = 5;
    /// The cluster does not offer the feature (no build-index for tags, repos, replication).
    pub const NOT_AVAILABLE: u8 = 6;
}

/// The text `krakenctl --help` ends with.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  ok
  1  other error
  2  usage (bad flags; no CA, certificate or seed given)
  3  cannot reach the seed or the cluster
  4  bad digest, tag, address, file or other argument
  5  not found (blob, tag, pull record; NotFound from the cluster)
  6  not available in this cluster (no build-index)
Errors are one line on stderr: `krakenctl: <message>`.";

/// Why a command failed; [`CtlError::exit_code`] is what the process exits with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CtlError {
    /// The command line cannot work (exit 2).
    #[error("{0}")]
    Usage(String),
    /// The seed or a node could not be reached (exit 3).
    #[error("{0}")]
    Unreachable(String),
    /// A bad digest, tag, address, file or other argument (exit 4).
    #[error("{0}")]
    BadArgument(String),
    /// The thing asked about does not exist (exit 5).
    #[error("not found: {0}")]
    NotFound(String),
    /// The cluster lacks the feature; the string says what is missing (exit 6).
    #[error("not available in this cluster: {0}")]
    NotAvailable(String),
    /// Anything else (exit 1).
    #[error("{0}")]
    Failed(String),
}

impl CtlError {
    /// The process exit code for this error (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            CtlError::Usage(_) => exit::USAGE,
            CtlError::Unreachable(_) => exit::UNREACHABLE,
            CtlError::BadArgument(_) => exit::BAD_ARGUMENT,
            CtlError::NotFound(_) => exit::NOT_FOUND,
            CtlError::NotAvailable(_) => exit::NOT_AVAILABLE,
            CtlError::Failed(_) => exit::FAILED,
        }
    }

    /// The message as one line (newlines folded into spaces).
    pub fn one_line(&self) -> String {
        self.to_string()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Classifies a failed call: unreachable nodes and timeouts are
    /// [`CtlError::Unreachable`], `NotFound` and `NameUnknown` (an upstream registry lacks
    /// the repository) answers [`CtlError::NotFound`], bad-request
    /// answers and unreadable local files [`CtlError::BadArgument`], the rest
    /// [`CtlError::Failed`].
    pub fn from_call(e: &CallError) -> Self {
        match e {
            CallError::Connect { .. } | CallError::Timeout { .. } | CallError::Stalled { .. } => {
                CtlError::Unreachable(e.to_string())
            }
            CallError::File { .. } => CtlError::BadArgument(e.to_string()),
            CallError::Remote { addr, source } => match source.kind {
                // An upstream registry without the repository is as missing as a blob.
                ErrorKind::NotFound | ErrorKind::NameUnknown => {
                    CtlError::NotFound(format!("{addr}: {}", source.message))
                }
                ErrorKind::BadRequest => {
                    CtlError::BadArgument(format!("{addr} answered: {}", source.message))
                }
                _ => CtlError::Failed(e.to_string()),
            },
            _ => CtlError::Failed(e.to_string()),
        }
    }
}

impl CtlError {
    /// Classifies a failed download: the call as [`Self::from_call`], an unwritable output
    /// file [`CtlError::BadArgument`], bytes that broke off or were wrong
    /// [`CtlError::Failed`].
    pub fn from_download(e: &DownloadError) -> Self {
        match e {
            DownloadError::Call(e) => CtlError::from_call(e),
            DownloadError::File { .. } => CtlError::BadArgument(e.to_string()),
            _ => CtlError::Failed(e.to_string()),
        }
    }
}

impl From<CallError> for CtlError {
    fn from(e: CallError) -> Self {
        CtlError::from_call(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kraken_client::proto::RemoteError;
    use std::net::SocketAddr;
    use std::time::Duration;

    #[test]
    fn codes_are_distinct_and_documented() {
        let all = [
            CtlError::Usage(String::new()),
            CtlError::Unreachable(String::new()),
            CtlError::BadArgument(String::new()),
            CtlError::NotFound(String::new()),
            CtlError::NotAvailable(String::new()),
            CtlError::Failed(String::new()),
        ];
        let mut codes: Vec<u8> = all.iter().map(CtlError::exit_code).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        for code in codes {
            assert!(EXIT_CODES_HELP.contains(&format!("  {code}  ")), "{code}");
        }
    }

    #[test]
    fn call_errors_map_to_codes() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 1));
        let timeout = CallError::Timeout {
            addr,
            after: Duration::from_secs(1),
        };
        assert_eq!(CtlError::from_call(&timeout).exit_code(), exit::UNREACHABLE);
        let not_found = CallError::Remote {
            addr,
            source: RemoteError::new(ErrorKind::NotFound, "gone"),
        };
        assert_eq!(CtlError::from_call(&not_found).exit_code(), exit::NOT_FOUND);
        let no_repo = CallError::Remote {
            addr,
            source: RemoteError::new(ErrorKind::NameUnknown, "upstream: repository unknown"),
        };
        assert_eq!(CtlError::from_call(&no_repo).exit_code(), exit::NOT_FOUND);
        let internal = CallError::Remote {
            addr,
            source: RemoteError::new(ErrorKind::Internal, "oops"),
        };
        assert_eq!(CtlError::from_call(&internal).exit_code(), exit::FAILED);
    }

    #[test]
    fn messages_fold_to_one_line() {
        let e = CtlError::Failed("a\nb\n  c".into());
        assert_eq!(e.one_line(), "a b c");
        assert_eq!(
            CtlError::NotAvailable("no build-index".into()).one_line(),
            "not available in this cluster: no build-index"
        );
    }
}
