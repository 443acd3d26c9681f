//! The HTTP/1.1 subset, on every model: what curl, browsers and wrk rely on.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::support::{fixtures, Server, IO_TIMEOUT, MODELS};

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One HTTP connection.
pub struct HttpClient {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl HttpClient {
    pub fn connect(addr: SocketAddr) -> HttpClient {
        let stream = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        HttpClient { writer: stream.try_clone().unwrap(), reader: BufReader::new(stream) }
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).unwrap();
    }

    /// Reads one response; `head_only` for the answer to HEAD.
    pub fn read(&mut self, head_only: bool) -> Option<HttpReply> {
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line).unwrap() == 0 {
            return None;
        }
        let status = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').unwrap();
            headers.push((name.to_string(), value.trim().to_string()));
        }
        let mut reply = HttpReply { status, headers, body: Vec::new() };
        // A 304 carries no Content-Length, and no body.
        let len: usize = reply.header("content-length").map_or(0, |v| v.parse().unwrap());
        if !head_only {
            reply.body = vec![0; len];
            self.reader.read_exact(&mut reply.body).unwrap();
        }
        Some(reply)
    }

    pub fn get(&mut self, target: &str) -> HttpReply {
        self.send(format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes());
        self.read(false).expect("a response")
    }

    pub fn is_closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(self.reader.read(&mut byte), Ok(0))
    }
}

#[test]
fn get_and_head_serve_files_with_their_headers_on_every_model() {
    let test_txt = std::fs::read(fixtures().join("test.txt")).unwrap();
    for model in MODELS.iter() {
        let server = Server::start(&["--model", model, "--root", fixtures().to_str().unwrap()]);
        let mut http = HttpClient::connect(server.addr);
        let reply = http.get("/test.txt");
        assert_eq!((reply.status, &reply.body), (200, &test_txt), "{model}");
        assert_eq!(reply.header("content-type"), Some("text/plain; charset=utf-8"), "{model}");
        assert!(reply.header("date").is_some_and(|d| d.ends_with(" GMT")), "{model}");
        let modified = std::fs::metadata(fixtures().join("test.txt")).unwrap().modified().unwrap();
        assert_eq!(reply.header("last-modified"), Some(httpdate::fmt_http_date(modified).as_str()), "{model}");
        // Keep-alive by default: the same connection serves HEAD next.
        http.send(b"HEAD /data/1k.bin HTTP/1.1\r\nHost: test\r\n\r\n");
        let head = http.read(true).unwrap();
        assert_eq!((head.status, head.header("content-length")), (200, Some("1024")), "{model}");
        assert_eq!(head.header("content-type"), Some("application/octet-stream"), "{model}");
        // ... and nothing follows a HEAD response: the next reply is the next request's.
        assert_eq!(http.get("/tiny.txt").body, b"hi\n", "{model}");
        assert_eq!(http.get("/nope").status, 404, "{model}");
        assert_eq!(http.get("/tiny.txt?cache=bust#frag").body, b"hi\n", "{model}: query ignored");
    }
}

#[test]
fn connection_close_and_http_1_0_close_after_the_response() {
    let server = Server::start(&["--root", fixtures().to_str().unwrap()]);
    let mut http = HttpClient::connect(server.addr);
    http.send(b"GET /tiny.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    let reply = http.read(false).unwrap();
    assert_eq!((reply.status, reply.header("connection")), (200, Some("close")));
    assert!(http.is_closed_by_server());

    // What follows a request that closes is never read, and a socket
    // closed with unread input is reset (RST): the response must already be
    // on its way by then, not held back to leave with a FIN.
    let mut http = HttpClient::connect(server.addr);
    let mut request = b"GET /tiny.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".to_vec();
    request.resize(request.len() + 200_000, b'x');
    http.send(&request);
    assert_eq!(http.read(false).unwrap().body, b"hi\n", "the answer before the close arrives whole");

    let mut http = HttpClient::connect(server.addr);
    http.send(b"GET /tiny.txt HTTP/1.0\r\n\r\n");
    assert_eq!(http.read(false).unwrap().body, b"hi\n");
    assert!(http.is_closed_by_server(), "HTTP/1.0 closes by default");

    let mut http = HttpClient::connect(server.addr);
    http.send(b"GET /tiny.txt HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
    assert_eq!(http.read(false).unwrap().header("connection"), Some("keep-alive"));
    assert_eq!(http.get("/tiny.txt").body, b"hi\n", "1.0 with keep-alive stays open");
}

#[test]
fn pipelined_http_requests_are_answered_in_order() {
    let server = Server::start(&["--model", "event-async", "--root", fixtures().to_str().unwrap()]);
    let mut http = HttpClient::connect(server.addr);
    http.send(b"GET /tiny.txt HTTP/1.1\r\nHost: t\r\n\r\nGET /nope HTTP/1.1\r\nHost: t\r\n\r\nHEAD /test.txt HTTP/1.1\r\nHost: t\r\n\r\nGET /docs/nested/deep.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(http.read(false).unwrap().body, b"hi\n");
    assert_eq!(http.read(false).unwrap().status, 404);
    assert_eq!(http.read(true).unwrap().status, 200);
    assert_eq!(http.read(false).unwrap().body, std::fs::read(fixtures().join("docs/nested/deep.txt")).unwrap());
}

#[test]
fn other_methods_get_405_with_allow_and_oversized_heads_431() {
    let server = Server::start(&["--root", fixtures().to_str().unwrap()]);
    let mut http = HttpClient::connect(server.addr);
    http.send(b"DELETE /test.txt HTTP/1.1\r\nHost: t\r\n\r\n");
    let reply = http.read(false).unwrap();
    assert_eq!((reply.status, reply.header("allow")), (405, Some("GET, HEAD")));
    assert!(http.is_closed_by_server());

    let mut http = HttpClient::connect(server.addr);
    let huge = format!("GET /tiny.txt HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(9000));
    http.send(huge.as_bytes());
    assert_eq!(http.read(false).unwrap().status, 431);

    let mut http = HttpClient::connect(server.addr);
    let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(5000));
    http.send(long.as_bytes());
    assert_eq!(http.read(false).unwrap().status, 414);
}
