//! Why a request was not served, with the HTTP-like code both protocols use.
//!
//! Every refusal in the kit, from the parser, the sandbox or the connection
//! limits, is one of these values, so the line protocol (`ERR 403 forbidden`)
//! and HTTP (`403 Forbidden`) always agree on what went wrong.

/// A request the server will not serve, and the status code it answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// 400: the request could not be parsed (empty line, control bytes, bad HTTP).
    #[error("malformed request")]
    BadRequest,
    /// 403: the path leaves the root, is hidden, or is not a regular file.
    #[error("forbidden")]
    Forbidden,
    /// 404: no such file under the root.
    #[error("not found")]
    NotFound,
    /// 405: an HTTP method other than GET or HEAD.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 414: the request line passed its byte limit.
    #[error("request line too long")]
    LineTooLong,
    /// 431: the HTTP head passed its byte limit.
    #[error("request header fields too large")]
    HeadTooLarge,
    /// 500: an unexpected I/O error while serving.
    #[error("internal error")]
    Internal,
    /// 501: an HTTP request whose body is sent in a transfer coding the
    /// server does not implement (any but `chunked`).
    #[error("not implemented")]
    NotImplemented,
    /// 503: the server is at its connection limit.
    #[error("overloaded")]
    Overloaded,
}

impl Refusal {
    /// The HTTP status code, also used by the line protocol's `ERR <code>`.
    pub fn code(self) -> u16 {
        match self {
            Refusal::BadRequest => 400,
            Refusal::Forbidden => 403,
            Refusal::NotFound => 404,
            Refusal::MethodNotAllowed => 405,
            Refusal::LineTooLong => 414,
            Refusal::HeadTooLarge => 431,
            Refusal::Internal => 500,
            Refusal::NotImplemented => 501,
            Refusal::Overloaded => 503,
        }
    }

    /// The HTTP reason phrase for [`Refusal::code`].
    pub fn http_reason(self) -> &'static str {
        match self {
            Refusal::BadRequest => "Bad Request",
            Refusal::Forbidden => "Forbidden",
            Refusal::NotFound => "Not Found",
            Refusal::MethodNotAllowed => "Method Not Allowed",
            Refusal::LineTooLong => "URI Too Long",
            Refusal::HeadTooLarge => "Request Header Fields Too Large",
            Refusal::Internal => "Internal Server Error",
            Refusal::NotImplemented => "Not Implemented",
            Refusal::Overloaded => "Service Unavailable",
        }
    }

    /// After these the stream can no longer be trusted to be in sync (or the
    /// server wants the client gone), so the connection is closed.
    pub fn closes_connection(self) -> bool {
        matches!(
            self,
            Refusal::BadRequest
                | Refusal::LineTooLong
                | Refusal::HeadTooLarge
                | Refusal::NotImplemented
                | Refusal::Overloaded
        )
    }
}

impl From<&std::io::Error> for Refusal {
    /// Maps the errors of opening a file under the root to what the client sees.
    fn from(err: &std::io::Error) -> Self {
        use rustix::io::Errno;
        match Errno::from_io_error(err) {
            Some(Errno::NOENT | Errno::NOTDIR | Errno::NAMETOOLONG) => Refusal::NotFound,
            // EXDEV: openat2 saw the path leave the root; ELOOP: a symlink the
            // fallback walk refuses; EACCES/EPERM: permissions; ENXIO: a socket
            // or device with nothing behind it.
            Some(
                Errno::XDEV | Errno::LOOP | Errno::ACCESS | Errno::PERM | Errno::NXIO | Errno::NODEV | Errno::ISDIR,
            ) => Refusal::Forbidden,
            _ => Refusal::Internal,
        }
    }
}
