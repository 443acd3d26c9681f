//! The `client` binary, as the OSTEP homework uses it.

use std::process::{Command, Output};

use crate::support::{client_bin, fixtures, Server};

fn client(server: &Server, args: &[&str]) -> Output {
    Command::new(client_bin()).args(args).env("SERVER_ADDR", server.addr.to_string()).output().unwrap()
}

#[test]
fn client_0_test_txt_prints_the_file_and_refusals_exit_1() {
    let server = Server::start(&["--root", fixtures().to_str().unwrap()]);
    let out = client(&server, &["0", "./test.txt"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(out.stdout, std::fs::read(fixtures().join("test.txt")).unwrap());

    let out = client(&server, &["0", "../Cargo.toml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("403 forbidden"));

    let out = client(&server, &["0", "tiny.txt", "missing", "tiny.txt"]);
    assert_eq!(out.status.code(), Some(1), "any refusal exits 1");
    assert_eq!(out.stdout, b"hi\nhi\n", "the others are still printed");
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing: 404 not found"));
}

#[test]
fn three_delayed_clients_each_print_the_time() {
    let server = Server::start(&["--model", "select", "--service", "time"]);
    let children: Vec<_> = ["0.3", "0.6", "0.9"]
        .iter()
        .map(|delay| {
            Command::new(client_bin())
                .args([delay, "--addr", &server.addr.to_string()])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8(out.stdout).unwrap().ends_with("Z\n"));
    }
}

#[test]
fn client_exits_2_on_usage_and_connection_errors() {
    let bad_delay = Command::new(client_bin()).args(["soon"]).output().unwrap();
    assert_eq!(bad_delay.status.code(), Some(2));
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let out = Command::new(client_bin())
        .args(["0", "x", "--wait", "0", "--addr", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot connect"));
}

/// `server &` then `client 0 ./test.txt`, pasted together: the client
/// retries a refused connection while the server is still starting.
#[test]
fn the_client_waits_for_a_server_that_is_starting() {
    // A port the kernel names, free again: the "server" binds it later.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let client = Command::new(client_bin())
        .args(["0", "tiny.txt", "--addr", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(400));
    let late = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let (mut conn, _) = late.accept().unwrap();
    let mut request = [0; 9];
    std::io::Read::read_exact(&mut conn, &mut request).unwrap();
    assert_eq!(&request, b"tiny.txt\n");
    std::io::Write::write_all(&mut conn, b"OK 3\nhi\n").unwrap();
    let out = client.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"hi\n");
}

/// A newcomer finds the subcommands from `client --help`.
#[test]
fn client_help_lists_its_subcommands() {
    let out = Command::new(client_bin()).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    for subcommand in ["client bench", "client grade"] {
        assert!(help.contains(subcommand), "`client --help` names {subcommand}:\n{help}");
    }
    assert!(help.contains("--wait"), "{help}");
}

#[test]
fn client_bench_counts_every_request_and_exits_1_on_wrong_responses() {
    let server = Server::start(&["--root", fixtures().to_str().unwrap()]);
    let addr = server.addr.to_string();
    let run = |extra: &[&str]| {
        let mut args = vec!["bench", "--addr", &addr, "--json"];
        args.extend_from_slice(extra);
        Command::new(client_bin()).args(args).output().unwrap()
    };
    for mode in [&[][..], &["--no-keepalive"][..]] {
        let mut args = vec!["--conns", "4", "--requests", "40", "--path", "test.txt", "--path", "data/1k.bin"];
        args.extend_from_slice(mode);
        let out = run(&args);
        assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
        let json = String::from_utf8(out.stdout).unwrap();
        assert!(json.contains("\"requests\":40,\"errors\":0"), "{mode:?}: {json}");
    }
    let out = run(&["--conns", "2", "--requests", "4", "--path", "missing"]);
    assert_eq!(out.status.code(), Some(1), "a refused request is a wrong response");
    assert!(String::from_utf8(out.stdout).unwrap().contains("\"requests\":0,\"errors\":4"));
}

#[test]
fn client_bench_holds_many_connections_and_writes_csv() {
    let server = Server::start(&["--root", fixtures().to_str().unwrap(), "--quiet"]);
    let csv = tempfile::NamedTempFile::new().unwrap();
    std::fs::remove_file(csv.path()).unwrap(); // a new file gets the header
    let out = Command::new(client_bin())
        .args(["bench", "--addr", &server.addr.to_string(), "--conns", "1500", "--requests", "3000"])
        .args(["--path", "tiny.txt", "--csv", csv.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stdout));
    let text = std::fs::read_to_string(csv.path()).unwrap();
    let mut lines = text.lines();
    assert!(lines.next().unwrap().starts_with("conns,requests,errors,"));
    assert!(lines.next().unwrap().starts_with("1500,3000,0,"));
}

/// `--vs-nginx` (here with `--smoke`: one short round) on a machine without
/// nginx and wrk still prints the table that needs neither: the
/// asynchronous models against the ideal rate.
#[test]
fn vs_nginx_without_nginx_prints_the_slow_storage_table() {
    let benchmark = client_bin().with_file_name("benchmark");
    let no_programs = tempfile::tempdir().unwrap();
    let out =
        Command::new(&benchmark).args(["--vs-nginx", "--smoke"]).env("PATH", no_programs.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("nginx or wrk is not on the PATH"), "{stdout}");
    let models: &[&str] =
        if cfg!(target_os = "linux") { &["event-async", "event-aio", "uring"] } else { &["event-async", "event-aio"] };
    for model in models {
        for conns in [32, 256] {
            let row = stdout
                .lines()
                .find(|line| line.split_whitespace().take(2).eq([*model, &conns.to_string()]))
                .unwrap_or_else(|| panic!("no row for {model} at {conns} conns:\n{stdout}"));
            let rate: f64 = row.split_whitespace().nth(2).unwrap().parse().unwrap();
            assert!(rate > 0.0, "{row}");
            assert!(row.contains("met"), "a verdict: {row}");
        }
    }
}

/// `--async-await --smoke`: the chapter's table runs, every model of it on
/// every workload (every response checked), and the memory lines follow.
#[test]
fn async_await_smoke_sets_tokio_beside_both_event_loops() {
    let benchmark = client_bin().with_file_name("benchmark");
    let out = Command::new(&benchmark).args(["--async-await", "--smoke"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for model in ["event", "event-async", "tokio"] {
        let rows = stdout
            .lines()
            .filter(|line| !line.starts_with("workload") && line.split_whitespace().any(|word| word == model))
            .count();
        assert_eq!(rows, 6, "{model}: five workloads and a memory line:\n{stdout}");
    }
    assert!(stdout.contains("256 conns"), "slow storage at 256 clients too:\n{stdout}");
    assert!(stdout.contains("bytes per connection"), "{stdout}");
}

/// `--techniques --smoke` without wrk on the PATH: the kit's own load
/// generator drives every workload against every variant of `uring-net`
/// (each with one technique off), `uring-net` itself and `event`, and every
/// cell is measured (every response checked).
#[test]
fn techniques_smoke_measures_every_variant_on_every_workload() {
    let benchmark = client_bin().with_file_name("benchmark");
    let no_programs = tempfile::tempdir().unwrap();
    let out =
        Command::new(&benchmark).args(["--techniques", "--smoke"]).env("PATH", no_programs.path()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("wrk is not on the PATH"), "{stdout}");
    let columns = ["event", "u-net", "-multishot", "-prov-bufs", "-reg-files", "-batching", "-defer-tw", "+zc-always"];
    let header = stdout.lines().find(|line| line.starts_with("workload")).unwrap_or_else(|| panic!("{stdout}"));
    assert_eq!(header.split_whitespace().skip(2).collect::<Vec<_>>(), columns, "{header}");
    for workload in [
        "1 KiB keep-alive, 50 conns",
        "1 KiB keep-alive, 500 conns",
        "1 KiB Connection: close, 50 conns",
        "64 KiB keep-alive, 50 conns",
    ] {
        for shape in ["-t1", "-t2"] {
            let rates = stdout
                .lines()
                .find(|line| line.starts_with(workload) && line.contains(&format!(" {shape} req/s ")))
                .unwrap_or_else(|| panic!("no {workload} {shape} row:\n{stdout}"));
            let cells: Vec<&str> = rates.rsplit(" req/s ").next().unwrap().split_whitespace().collect();
            assert_eq!(cells.len(), columns.len(), "{rates}");
            // Off Linux only event runs; there the other columns say "-".
            let measured = if cfg!(target_os = "linux") { &cells[..] } else { &cells[..1] };
            for cell in measured {
                assert!(cell.parse::<f64>().is_ok_and(|rate| rate > 0.0), "{workload} {shape}: {rates}");
            }
        }
    }
    if cfg!(target_os = "linux") {
        let ratios: Vec<&str> =
            stdout.lines().filter(|line| line.starts_with(' ') && line.trim_start().starts_with("x u-net ")).collect();
        assert_eq!(ratios.len(), 8, "a ratio line per workload and shape:\n{stdout}");
        for line in ratios {
            let cells: Vec<&str> = line.split_whitespace().skip(2).collect();
            assert_eq!(cells[1], "ref", "u-net is what the others are divided by: {line}");
            for (column, cell) in columns.iter().zip(&cells).filter(|(column, _)| **column != "u-net") {
                let ratio = cell.strip_suffix('x').and_then(|r| r.parse::<f64>().ok());
                assert!(ratio.is_some_and(|r| r > 0.0), "{column}: {line}");
            }
        }
    }
}
