//! What people expect of a static file server over HTTP: validators and
//! 304s, byte ranges, a directory's index.html; checked with raw requests
//! and, where they are installed, with curl and wget resuming a download.

use std::path::Path;
use std::process::Command;

use crate::http::HttpClient;
use crate::support::Server;

/// A root with an index, a file small enough to cache, and one streamed
/// with `sendfile` (larger than `--cache-max-file 64KiB`).
fn site() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), b"<h1>home</h1>\n").unwrap();
    std::fs::create_dir(dir.path().join("docs")).unwrap();
    std::fs::write(dir.path().join("docs/index.html"), b"<h1>docs</h1>\n").unwrap();
    std::fs::create_dir(dir.path().join("empty")).unwrap();
    std::fs::write(dir.path().join("small.txt"), b"0123456789abcdefghij").unwrap();
    std::fs::write(dir.path().join("large.bin"), large()).unwrap();
    dir
}

fn large() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn start(model: &str, root: &Path) -> Server {
    Server::start(&["--model", model, "--root", root.to_str().unwrap(), "--cache-max-file", "64KiB"])
}

/// One request on `http` with `headers`; its response.
pub fn request(http: &mut HttpClient, method: &str, target: &str, headers: &[(&str, &str)]) -> crate::http::HttpReply {
    let mut text = format!("{method} {target} HTTP/1.1\r\nHost: test\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    http.send(text.as_bytes());
    http.read(method == "HEAD").expect("a response")
}

#[test]
fn validators_answer_304_for_a_current_copy_on_get_and_head() {
    let root = site();
    for model in ["event", "threads"] {
        let server = start(model, root.path());
        let mut http = HttpClient::connect(server.addr);
        for path in ["/small.txt", "/large.bin"] {
            let first = request(&mut http, "GET", path, &[]);
            let etag = first.header("etag").expect("an ETag").to_string();
            let modified = first.header("last-modified").expect("a Last-Modified").to_string();
            assert_eq!(first.header("accept-ranges"), Some("bytes"));
            for method in ["GET", "HEAD"] {
                let cached = request(&mut http, method, path, &[("If-None-Match", &etag)]);
                assert_eq!((cached.status, cached.body.len()), (304, 0), "{model} {method} {path}");
                assert_eq!(cached.header("etag"), Some(etag.as_str()));
                let cached = request(&mut http, method, path, &[("If-Modified-Since", &modified)]);
                assert_eq!(cached.status, 304, "{model} {method} {path} If-Modified-Since");
            }
            let stale = request(&mut http, "GET", path, &[("If-None-Match", "\"1-1\"")]);
            assert_eq!(stale.status, 200);
            let old = request(&mut http, "GET", path, &[("If-Modified-Since", "Mon, 01 Jan 2001 00:00:00 GMT")]);
            assert_eq!(old.status, 200);
        }
        // The connection is still in step after 304s without bodies.
        assert_eq!(request(&mut http, "GET", "/small.txt", &[]).body, b"0123456789abcdefghij");
    }
}

#[test]
fn single_byte_ranges_are_answered_206_and_unsatisfiable_ones_416() {
    let root = site();
    let large = large();
    for model in ["event", "event-async", "pool"] {
        let server = start(model, root.path());
        let mut http = HttpClient::connect(server.addr);
        for (path, content) in [("/small.txt", &b"0123456789abcdefghij"[..]), ("/large.bin", &large[..])] {
            let len = content.len();
            for (range, start, end) in
                [("bytes=0-4", 0, 5), ("bytes=5-", 5, len), ("bytes=-3", len - 3, len), ("bytes=2-999999", 2, len)]
            {
                let reply = request(&mut http, "GET", path, &[("Range", range)]);
                assert_eq!(reply.status, 206, "{model} {path} {range}");
                assert_eq!(reply.body, &content[start..end], "{model} {path} {range}");
                let expected = format!("bytes {}-{}/{len}", start, end - 1);
                assert_eq!(reply.header("content-range"), Some(expected.as_str()));
            }
            let reply = request(&mut http, "GET", path, &[("Range", &format!("bytes={len}-"))]);
            assert_eq!(reply.status, 416, "{model} {path}");
            assert_eq!(reply.header("content-range"), Some(format!("bytes */{len}").as_str()));
            let several = request(&mut http, "GET", path, &[("Range", "bytes=0-1,4-5")]);
            assert_eq!((several.status, several.body.len()), (200, len), "several ranges: the whole file");
            let etag = request(&mut http, "HEAD", path, &[]).header("etag").unwrap().to_string();
            let same = request(&mut http, "GET", path, &[("Range", "bytes=0-1"), ("If-Range", &etag)]);
            assert_eq!(same.status, 206);
            let changed = request(&mut http, "GET", path, &[("Range", "bytes=0-1"), ("If-Range", "\"0-0\"")]);
            assert_eq!((changed.status, changed.body.len()), (200, len), "If-Range of other content: whole file");
        }
    }
}

#[test]
fn a_directory_serves_its_index_html_and_without_one_stays_refused() {
    let root = site();
    for model in ["event", "threads"] {
        let server = start(model, root.path());
        let mut http = HttpClient::connect(server.addr);
        let home = request(&mut http, "GET", "/", &[]);
        assert_eq!((home.status, home.body.as_slice()), (200, &b"<h1>home</h1>\n"[..]), "{model}");
        assert_eq!(home.header("content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(request(&mut http, "GET", "/docs/", &[]).body, b"<h1>docs</h1>\n");
        assert_eq!(request(&mut http, "GET", "/empty/", &[]).status, 403, "no listing");
        let moved = request(&mut http, "GET", "/docs", &[]);
        assert_eq!((moved.status, moved.header("location")), (301, Some("/docs/")), "a directory without its slash");
        assert_eq!(request(&mut http, "GET", "/small.txt/", &[]).status, 404);
        assert_eq!(request(&mut http, "GET", "/missing/", &[]).status, 404);
    }
}

/// Runs a real download client, if it is installed; `None` (and a note)
/// otherwise.
fn run_if_installed(program: &str, args: &[&str]) -> Option<std::process::Output> {
    match Command::new(program).args(args).output() {
        Ok(output) => Some(output),
        Err(_) => {
            eprintln!("skipped: {program} is not installed");
            None
        }
    }
}

#[test]
fn curl_and_wget_resume_a_cut_download_byte_exactly() {
    let root = site();
    let large = large();
    let server = start("event", root.path());
    let url = format!("http://{}/large.bin", server.addr);
    let out = tempfile::tempdir().unwrap();
    for (program, resume_args) in [("curl", vec!["-sS", "-C", "-", "-o"]), ("wget", vec!["-q", "-c", "-O"])] {
        let file = out.path().join(program);
        std::fs::write(&file, &large[..123_457]).unwrap(); // a download cut short
        let mut args = resume_args.clone();
        let file_arg = file.to_str().unwrap().to_string();
        args.push(&file_arg);
        args.push(&url);
        let Some(output) = run_if_installed(program, &args) else { continue };
        assert!(output.status.success(), "{program}: {}", String::from_utf8_lossy(&output.stderr));
        assert!(std::fs::read(&file).unwrap() == large, "{program} did not resume byte-exactly");
    }
}

/// A request to send to both servers: method, target, headers.
type Exchange<'a> = (&'a str, &'a str, Vec<(&'a str, &'a str)>);

#[test]
fn conditional_and_range_requests_are_answered_as_nginx_answers_them() {
    let root = site();
    let Some(nginx) = crate::support::Nginx::start(&format!(
        "server {{ listen {{listen}}; root {}; etag on; }}",
        root.path().display()
    )) else {
        return;
    };
    let ours = start("event", root.path());
    let ask = |addr, method: &str, target: &str, headers: &[(&str, &str)]| {
        let mut http = HttpClient::connect(addr);
        request(&mut http, method, target, headers)
    };
    // The validators are the same for the same file: nginx's ETag format.
    let theirs = ask(nginx.addr, "HEAD", "/small.txt", &[]);
    let mine = ask(ours.addr, "HEAD", "/small.txt", &[]);
    let etag = theirs.header("etag").expect("nginx sends an ETag").to_string();
    assert_eq!(mine.header("etag"), Some(etag.as_str()), "the same ETag as nginx");
    assert_eq!(mine.header("last-modified"), theirs.header("last-modified"));
    let modified = theirs.header("last-modified").unwrap().to_string();
    let cases: Vec<Exchange> = vec![
        ("GET", "/small.txt", vec![("Range", "bytes=0-4")]),
        ("GET", "/small.txt", vec![("Range", "bytes=5-")]),
        ("GET", "/small.txt", vec![("Range", "bytes=-3")]),
        ("GET", "/small.txt", vec![("Range", "bytes=2-999999")]),
        ("GET", "/small.txt", vec![("Range", "bytes=20-")]),
        ("GET", "/large.bin", vec![("Range", "bytes=100000-100099")]),
        ("GET", "/small.txt", vec![("If-None-Match", etag.as_str())]),
        ("HEAD", "/small.txt", vec![("If-None-Match", etag.as_str())]),
        ("GET", "/small.txt", vec![("If-None-Match", "\"0-0\"")]),
        ("GET", "/small.txt", vec![("If-Modified-Since", modified.as_str())]),
        ("GET", "/small.txt", vec![("Range", "bytes=0-1"), ("If-Range", etag.as_str())]),
        ("GET", "/small.txt", vec![("Range", "bytes=0-1"), ("If-Range", "\"0-0\"")]),
        ("GET", "/", vec![]),
        ("GET", "/docs/", vec![]),
    ];
    for (method, target, headers) in &cases {
        let theirs = ask(nginx.addr, method, target, headers);
        let mine = ask(ours.addr, method, target, headers);
        let what = format!("{method} {target} {headers:?}");
        assert_eq!(mine.status, theirs.status, "{what}");
        assert_eq!(mine.header("content-range"), theirs.header("content-range"), "{what}");
        if theirs.status != 416 {
            // nginx's 416 carries an HTML page; ours a line of text.
            assert_eq!(mine.body, theirs.body, "{what}");
        }
    }
}
