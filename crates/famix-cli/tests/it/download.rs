//! `download-clip` against a loopback HTTP server (never the internet): fresh
//! download, resume with Range, SHA-256 mismatch, reuse of a verified file.
use crate::common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};

use famix::clip::download::fetch;
use famix::io::sha256_file;
use sha2::{Digest, Sha256};

/// Serves `body` for any GET; honours `Range: bytes=N-`. Records request headers.
fn serve(body: Vec<u8>, requests: usize) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let log2 = log.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(requests) {
            let mut s = stream.unwrap();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut head = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                    break;
                }
                head.push_str(&line);
            }
            log2.lock().unwrap().push(head.clone());
            let start = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("range: bytes=").map(|r| r.trim_end_matches('-').trim().to_string()))
                .and_then(|n| n.trim_end_matches('-').parse::<usize>().ok());
            let (status, part) = match start {
                Some(n) => ("206 Partial Content", &body[n..]),
                None => ("200 OK", &body[..]),
            };
            let _ = write!(s, "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", part.len());
            let _ = s.write_all(part);
            let _ = s.flush();
            let mut rest = Vec::new();
            let _ = reader.read_to_end(&mut rest);
        }
    });
    (format!("http://{addr}"), log)
}

fn sha(b: &[u8]) -> String {
    Sha256::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn downloads_verifies_and_resumes() {
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = sha(&body);
    let dir = common::tmpdir();

    // Fresh download.
    let (base, log) = serve(body.clone(), 1);
    let path = fetch(&base, &digest, "RN-test.pt", dir.path(), &famix::progress::Silent).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert!(log.lock().unwrap()[0].starts_with(&format!("GET /{digest}/RN-test.pt ")));

    // A verified file is reused without any request (the server would accept none).
    let (base_dead, log_dead) = serve(vec![], 0);
    assert_eq!(fetch(&base_dead, &digest, "RN-test.pt", dir.path(), &famix::progress::Silent).unwrap(), path);
    assert!(log_dead.lock().unwrap().is_empty());

    // Resume: half a partial file → a Range request for the rest.
    std::fs::remove_file(&path).unwrap();
    std::fs::write(dir.path().join("RN-test.pt.partial"), &body[..80_000]).unwrap();
    let (base, log) = serve(body.clone(), 1);
    let path = fetch(&base, &digest, "RN-test.pt", dir.path(), &famix::progress::Silent).unwrap();
    assert_eq!(sha256_file(&path).unwrap(), digest);
    assert!(log.lock().unwrap()[0].to_ascii_lowercase().contains("range: bytes=80000-"));
    assert!(!dir.path().join("RN-test.pt.partial").exists());
}

#[test]
fn checksum_mismatch_is_rejected() {
    let dir = common::tmpdir();
    let (base, _) = serve(b"not the model".to_vec(), 1);
    let wanted = "0".repeat(64);
    let err = fetch(&base, &wanted, "RN-bad.pt", dir.path(), &famix::progress::Silent).unwrap_err();
    assert!(format!("{err:#}").contains("SHA-256"), "{err:#}");
    assert!(!dir.path().join("RN-bad.pt").exists());
    assert!(!dir.path().join("RN-bad.pt.partial").exists());
}

#[test]
fn unknown_model_name_lists_choices() {
    let (code, _, err) = common::run_famix(&["download-clip", "ViT-B/32", "--dir", "/tmp/never-used"]);
    assert_ne!(code, 0);
    assert!(err.contains("RN50") && err.contains("RN101"), "{err}");
}

#[test]
fn a_complete_partial_file_is_verified_and_renamed_without_a_request() {
    let body: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
    let digest = sha(&body);
    let dir = common::tmpdir();
    std::fs::write(dir.path().join("RN-full.pt.partial"), &body).unwrap();
    let (base_dead, log_dead) = serve(vec![], 0);
    let path = fetch(&base_dead, &digest, "RN-full.pt", dir.path(), &famix::progress::Silent).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), body);
    assert!(log_dead.lock().unwrap().is_empty(), "no request was needed");
}

/// A server that never stops sending (no Content-Length; it gives up by itself after
/// 8 MB) cannot fill the disk: the download stops at the limit, naming the file.
#[test]
fn an_endless_body_is_cut_off_at_the_limit() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Some(Ok(mut s)) = listener.incoming().next() {
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line != "\r\n" {
                line.clear();
            }
            let _ = write!(s, "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n");
            let chunk = vec![7u8; 1 << 16];
            for _ in 0..128 {
                if s.write_all(&chunk).is_err() {
                    break;
                }
            }
        }
    });
    let dir = common::tmpdir();
    let e = famix::clip::download::fetch_limited(
        &format!("http://{addr}"),
        &"0".repeat(64),
        "RN-x.pt",
        dir.path(),
        1 << 20,
        &famix::progress::Silent,
    )
    .unwrap_err();
    let msg = format!("{e:#}");
    assert!(msg.contains("RN-x.pt.partial") && msg.contains("would grow past"), "{msg}");
    assert!(std::fs::metadata(dir.path().join("RN-x.pt.partial")).map(|m| m.len()).unwrap_or(0) <= 1 << 20);
}
