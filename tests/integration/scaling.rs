//! Scaling out (docs/scaling-out.md): two servers behind nginx as a load
//! balancer, on loopback. Skipped, with a message, when nginx is absent.

use crate::http::HttpClient;
use crate::support::{Nginx, Server};

#[test]
fn two_servers_behind_nginx_share_the_load() {
    // Two backends, each with its own root, so responses say who answered.
    let roots: Vec<_> = ["A", "B"]
        .iter()
        .map(|name| {
            let root = tempfile::tempdir().unwrap();
            std::fs::write(root.path().join("who.txt"), name).unwrap();
            root
        })
        .collect();
    let backends: Vec<_> = roots.iter().map(|r| Server::start(&["--root", r.path().to_str().unwrap()])).collect();
    let upstreams: String = backends.iter().map(|b| format!("server {};", b.addr)).collect();
    let Some(nginx) = Nginx::start(&format!(
        "upstream kit {{ {upstreams} keepalive 8; }}\n\
         server {{ listen {{listen}};\n\
           location / {{ proxy_pass http://kit; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }}"
    )) else {
        return;
    };
    let addr = nginx.addr;
    let mut answered_by = Vec::new();
    for _ in 0..20 {
        let reply = HttpClient::connect(addr).get("/who.txt");
        assert_eq!(reply.status, 200);
        answered_by.push(reply.body);
    }
    drop(nginx);
    assert!(answered_by.iter().any(|b| b == b"A") && answered_by.iter().any(|b| b == b"B"), "{answered_by:?}");
}
