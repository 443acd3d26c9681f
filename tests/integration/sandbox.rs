//! Escape attempts over the wire: each refused with the right code, nothing
//! from outside the root ever sent, and the server still serving afterwards.

use crate::support::{hostile_tree, Reply, Server, MODELS};

/// (request, expected code). The secret outside the root reads `TOP SECRET`.
const ESCAPES: &[(&[u8], u16)] = &[
    (b"../secret", 403),
    (b"a/../../secret", 403),
    (b"a/b/../../../secret", 403),
    (b"/etc/passwd", 403),
    (b"//etc/passwd", 403),
    (b"out-link", 403),
    (b"out-dir/secret", 403),
    (b"fifo", 403),
    (b"a", 403),
    (b"a/b", 403),
    (b".", 403),
    (b".hidden", 403),
    (b"a/.hidden", 403),
    (b"test.txt\0.png", 400),
    (b"a\x01b", 400),
    (b"a\x7fb", 400),
    (b"test.txt/", 404),
    (b"nope", 404),
];

#[test]
fn every_escape_attempt_is_refused_and_the_server_keeps_serving() {
    let (root, _outside) = hostile_tree();
    for model in MODELS.iter() {
        let server = Server::start(&["--model", model, "--root", root.path().to_str().unwrap()]);
        for &(request, code) in ESCAPES {
            // A fresh connection each time: 400 closes the connection.
            let reply = server.connect().get(request);
            assert_eq!(reply, Reply::Err(code), "{model}: {:?}", String::from_utf8_lossy(request));
        }
        assert_eq!(server.get("in-link").body(), b"deep", "{model}: a symlink inside the root is followed");
        assert_eq!(server.get("./a//b/./c.txt").body(), b"deep", "{model}");
        assert!(server.get("test.txt").body().starts_with(b"Hello"), "{model}: still serving");
    }
}

#[test]
fn hidden_files_are_served_only_with_allow_hidden() {
    let (root, _outside) = hostile_tree();
    let server = Server::start(&["--root", root.path().to_str().unwrap(), "--allow-hidden"]);
    assert_eq!(server.get(".hidden").body(), b"hidden");
    assert_eq!(server.get("out-link"), Reply::Err(403), "--allow-hidden does not open the sandbox");
}
