//! Scaling out (docs/scaling-out.md): two servers behind nginx as a load
//! balancer, on loopback. Skipped, with a message, when nginx is absent.

use std::process::{Command, Stdio};

use crate::http::HttpClient;
use crate::support::Server;

#[test]
fn two_servers_behind_nginx_share_the_load() {
    if Command::new("nginx").arg("-v").stderr(Stdio::null()).status().is_err() {
        eprintln!("skipped: nginx is not installed (apt-get install nginx-light)");
        return;
    }
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

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // nginx cannot report a port it picked: ask the kernel for a free one.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let upstreams: String = backends.iter().map(|b| format!("server {};", b.addr)).collect();
    let config = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 256; }}\n\
         http {{ access_log off; client_body_temp_path {d}/b; proxy_temp_path {d}/p; fastcgi_temp_path {d}/f;\n\
           uwsgi_temp_path {d}/u; scgi_temp_path {d}/s;\n\
           upstream kit {{ {upstreams} keepalive 8; }}\n\
           server {{ listen 127.0.0.1:{port};\n\
             location / {{ proxy_pass http://kit; proxy_http_version 1.1; proxy_set_header Connection \"\"; }} }} }}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), config).unwrap();
    let mut nginx = Command::new("nginx")
        .args(["-c", &format!("{d}/nginx.conf"), "-p", &d.to_string(), "-e", &format!("{d}/error.log")])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = std::time::Instant::now() + crate::support::IO_TIMEOUT;
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(std::time::Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut answered_by = Vec::new();
    for _ in 0..20 {
        let reply = HttpClient::connect(addr).get("/who.txt");
        assert_eq!(reply.status, 200);
        answered_by.push(reply.body);
    }
    let _ = nginx.kill();
    let _ = nginx.wait();
    assert!(answered_by.iter().any(|b| b == b"A") && answered_by.iter().any(|b| b == b"B"), "{answered_by:?}");
}
