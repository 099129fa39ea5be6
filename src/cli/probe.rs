//! `kairos probe [URL]`: one HTTP GET; exit status 0 on a `2xx` answer, 1
//! on anything else (another status, no answer within `--timeout` — the
//! client commands' flag, default 15 s — or a refused connection), with one
//! line saying what it got.
//!
//! It exists for container health checks: the image `deploy/image.sh`
//! builds holds the binary and its libraries only — no shell, no curl — so
//! Compose's `healthcheck` runs `/kairos probe http://127.0.0.1:7201/readyz`.
//! The default URL is the node's readiness on the default `--http-addr`.
//!
//! It speaks plain HTTP/1.1 (`--http-addr` serves nothing else), reads at
//! most [`MAX_ANSWER_BYTES`] of the answer and needs no credential
//! (`/livez` and `/readyz` are open).

use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The most of an answer the probe reads, bytes.
pub const MAX_ANSWER_BYTES: u64 = 64 * 1024;

/// `kairos probe`.
#[derive(clap::Args, Debug)]
pub struct ProbeArgs {
    /// `http://host:port/path` to GET (plain HTTP).
    #[arg(default_value = "http://127.0.0.1:7201/readyz")]
    url: String,
}

/// Runs `kairos probe`, giving up after `timeout`: `Ok` (and the status
/// line on stdout) for a 2xx answer.
pub async fn run(args: ProbeArgs, timeout: Duration) -> anyhow::Result<()> {
    let answer = tokio::time::timeout(timeout, get(&args.url))
        .await
        .map_err(|_| anyhow!("{}: no answer within {timeout:?}", args.url))??;
    let line = if answer.body_line.is_empty() {
        format!("{}: HTTP {}", args.url, answer.status)
    } else {
        format!("{}: HTTP {}: {}", args.url, answer.status, answer.body_line)
    };
    if !(200..300).contains(&answer.status) {
        bail!(line);
    }
    println!("{line}");
    Ok(())
}

/// What a GET was answered.
#[derive(Debug, PartialEq, Eq)]
struct Answer {
    /// The status code.
    status: u16,
    /// The body's first line, trimmed (empty for a chunked body).
    body_line: String,
}

/// Where a URL points: the address to dial, the `Host` header and the path.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    host: String,
    port: u16,
    authority: String,
    path: String,
}

/// Parses `http://host[:port][/path]`; anything else is an error.
fn target(url: &str) -> anyhow::Result<Target> {
    let uri: http::Uri = url.parse().with_context(|| format!("{url:?} is not a URL"))?;
    if uri.scheme_str() != Some("http") {
        bail!("{url:?}: only http:// URLs can be probed");
    }
    let authority = uri.authority().ok_or_else(|| anyhow!("{url:?}: no host"))?;
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        bail!("{url:?}: no host");
    }
    Ok(Target {
        host: host.to_string(),
        port: authority.port_u16().unwrap_or(80),
        authority: authority.as_str().to_string(),
        path: uri.path_and_query().map_or("/", |p| p.as_str()).to_string(),
    })
}

/// Sends one GET and reads the answer's status and first body line.
async fn get(url: &str) -> anyhow::Result<Answer> {
    let target = target(url)?;
    let mut stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .with_context(|| format!("{url}: cannot connect"))?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: kairos-probe\r\nConnection: close\r\n\r\n",
        target.path, target.authority
    );
    stream
        .write_all(request.as_bytes())
        .await
        .with_context(|| format!("{url}: sending the request"))?;
    let mut answer = Vec::new();
    stream
        .take(MAX_ANSWER_BYTES)
        .read_to_end(&mut answer)
        .await
        .with_context(|| format!("{url}: reading the answer"))?;
    parse_answer(&answer).ok_or_else(|| anyhow!("{url}: not an HTTP answer"))
}

/// The status and first body line of a raw HTTP/1.x answer.
fn parse_answer(raw: &[u8]) -> Option<Answer> {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let mut status_line = lines.next()?.split_whitespace();
    if !status_line.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = status_line.next()?.parse().ok()?;
    let chunked = lines.any(|h| {
        h.split_once(':').is_some_and(|(name, value)| {
            name.trim().eq_ignore_ascii_case("transfer-encoding")
                && value.to_ascii_lowercase().contains("chunked")
        })
    });
    let body_line = if chunked {
        String::new()
    } else {
        body.lines().next().unwrap_or("").trim().to_string()
    };
    Some(Answer { status, body_line })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_port_and_path() {
        let t = target("http://127.0.0.1:7201/readyz").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str(), t.path.as_str()),
            ("127.0.0.1", 7201, "127.0.0.1:7201", "/readyz")
        );
        let t = target("http://kairos-2").unwrap();
        assert_eq!((t.host.as_str(), t.port, t.path.as_str()), ("kairos-2", 80, "/"));
        let t = target("http://[::1]:9/livez?x=1").unwrap();
        assert_eq!((t.host.as_str(), t.path.as_str()), ("::1", "/livez?x=1"));
        for bad in [
            "https://127.0.0.1/readyz",
            "127.0.0.1:7201",
            "/readyz",
            "http:///x",
        ] {
            assert!(target(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn answers_give_status_and_the_first_body_line() {
        let ok = parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").unwrap();
        assert_eq!((ok.status, ok.body_line.as_str()), (200, "ok"));
        let not_ready =
            parse_answer(b"HTTP/1.1 503 Service Unavailable\r\n\r\nno known leader\nmore\n").unwrap();
        assert_eq!(
            (not_ready.status, not_ready.body_line.as_str()),
            (503, "no known leader")
        );
        let chunked =
            parse_answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nok\n\r\n0\r\n\r\n")
                .unwrap();
        assert_eq!((chunked.status, chunked.body_line.as_str()), (200, ""));
        assert_eq!(parse_answer(b"SSH-2.0-OpenSSH\r\n"), None);
        assert_eq!(parse_answer(b""), None);
    }

    /// A one-answer HTTP server on loopback: its URL.
    async fn serve_once(answer: &'static [u8]) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut request = vec![0u8; 1024];
            let n = stream.read(&mut request).await.unwrap();
            assert!(request[..n].starts_with(b"GET /readyz HTTP/1.1\r\n"));
            stream.write_all(answer).await.unwrap();
        });
        format!("http://{addr}/readyz")
    }

    #[tokio::test]
    async fn a_2xx_passes_and_anything_else_fails_naming_what_it_got() {
        let probe = |url: String| run(ProbeArgs { url }, Duration::from_secs(10));
        let url = serve_once(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").await;
        probe(url).await.unwrap();
        let url =
            serve_once(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 16\r\n\r\nno known leader\n")
                .await;
        let err = probe(url.clone()).await.unwrap_err().to_string();
        assert_eq!(err, format!("{url}: HTTP 503: no known leader"));
        // Nothing listens on a port just released.
        let port = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap().port()
        };
        let err = probe(format!("http://127.0.0.1:{port}/readyz"))
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("cannot connect"), "{err:#}");
        // A server that accepts and never answers: the timeout.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/readyz", silent.local_addr().unwrap());
        let err = run(ProbeArgs { url: url.clone() }, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), format!("{url}: no answer within 200ms"));
    }
}
