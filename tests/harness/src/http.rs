//! A minimal blocking HTTP/1.1 client (`Connection: close`) for the harness
//! and for tests that talk to a server directly: [`http`] for plain HTTP,
//! [`request`] for an [`Endpoint`] (credentials, HTTPS through `curl`,
//! token auth); plus [`base64`] and [`http_date`].
//!
//! ```no_run
//! use harness::{http, Registry};
//! let registry = Registry::start();
//! let response = http(&registry.host(), "GET", "/v2/", &[], &[]).unwrap();
//! assert_eq!(response.status, 200);
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::token::{harness_scope, TokenRealm};

pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(crate) fn describe(&self) -> String {
        format!("{} {}", self.status, String::from_utf8_lossy(&self.body))
    }
}

/// One request to `host`; `path` may carry a query.
pub fn http(
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut stream = TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw, method == "HEAD")
}

/// How the harness reaches a registry: its `host:port`, the basic
/// credentials to send (if any) and, for HTTPS, the CA (PEM) to trust. Plain
/// registries are spoken to by [`http`], HTTPS ones through `curl`.
/// With a `token_realm`, the basic credentials go to the token server
/// instead, and the registry gets the bearer token it hands out.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub host: String,
    pub basic_auth: Option<(String, String)>,
    pub ca_pem: Option<PathBuf>,
    pub token_realm: Option<TokenRealm>,
}

impl Endpoint {
    /// Plain HTTP, no credentials: what the `push_*` functions taking a
    /// bare host use.
    pub fn plain(host: &str) -> Endpoint {
        Endpoint {
            host: host.to_owned(),
            basic_auth: None,
            ca_pem: None,
            token_realm: None,
        }
    }
}

/// One request to `endpoint`, with its credentials, over HTTPS when it has
/// a CA; `path` may carry a query. For a token-auth registry, a fresh token
/// for what the request needs (see [`harness_scope`]) is fetched first.
pub fn request(
    endpoint: &Endpoint,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let authorization = match &endpoint.token_realm {
        Some(realm) => {
            let scope = harness_scope(method, path);
            let token = realm.fetch_token(endpoint.basic_auth.as_ref(), scope.as_deref())?;
            Some(format!("Bearer {token}"))
        }
        None => endpoint.basic_auth.as_ref().map(|(user, password)| {
            format!("Basic {}", base64(format!("{user}:{password}").as_bytes()))
        }),
    };
    let mut all: Vec<(&str, &str)> = headers.to_vec();
    if let Some(value) = &authorization {
        all.push(("Authorization", value));
    }
    match &endpoint.ca_pem {
        None => http(&endpoint.host, method, path, &all, body),
        Some(ca) => curl(&endpoint.host, ca, method, path, &all, body),
    }
}

/// One HTTPS request with `curl`, trusting only `ca`.
fn curl(
    host: &str,
    ca: &Path,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let scratch = tempfile::Builder::new()
        .prefix("oci-cache-curl-")
        .tempdir()?;
    let (head_file, body_file, sent_file) = (
        scratch.path().join("head"),
        scratch.path().join("body"),
        scratch.path().join("sent"),
    );
    let mut command = Command::new("curl");
    command
        .args(["--silent", "--show-error", "--max-time", "30", "--http1.1"])
        .arg("--cacert")
        .arg(ca)
        .arg("--dump-header")
        .arg(&head_file)
        .arg("--output")
        .arg(&body_file)
        // No `Expect: 100-continue` round, whose interim head would come first.
        .args(["--header", "Expect:"]);
    if method == "HEAD" {
        command.arg("--head");
    } else {
        command.args(["--request", method]);
    }
    if method == "POST" || method == "PUT" || method == "PATCH" || !body.is_empty() {
        std::fs::write(&sent_file, body)?;
        command
            .arg("--data-binary")
            .arg(format!("@{}", sent_file.display()));
    }
    for (name, value) in headers {
        command.arg("--header").arg(format!("{name}: {value}"));
    }
    command.arg(format!("https://{host}{path}"));
    let output = command.stdin(Stdio::null()).output().map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("running curl (apt-get install curl): {e}"),
        )
    })?;
    if !output.status.success() {
        return Err(std::io::Error::other(format!(
            "curl {method} https://{host}{path}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )));
    }
    let head = std::fs::read(&head_file)?;
    // The last head is the answer (an interim 1xx head may precede it).
    let text = String::from_utf8_lossy(&head).into_owned();
    let last = text
        .split("\r\n\r\n")
        .filter(|block| !block.trim().is_empty())
        .last()
        .unwrap_or_default()
        .to_owned();
    let mut raw = last.into_bytes();
    raw.extend_from_slice(b"\r\n\r\n");
    let mut response = parse_response(&raw, true)?;
    // curl has already undone any chunked encoding.
    response.body = std::fs::read(&body_file).unwrap_or_default();
    Ok(response)
}

/// Standard base64 with padding, as in `Authorization: Basic` and the
/// `auth` field of docker/podman auth files.
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn parse_response(raw: &[u8], head: bool) -> std::io::Result<HttpResponse> {
    let bad = |why: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, why.to_owned());
    let split = find(raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head_text = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head_text.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("no status line"))?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if head {
        body.clear();
    } else if chunked {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(data, b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `time` as an HTTP-date (IMF-fixdate, RFC 9110), such as
/// `Fri, 27 Nov 2026 21:30:05 GMT`, in whole seconds.
pub fn http_date(time: std::time::SystemTime) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let secs = time
        .duration_since(std::time::UNIX_EPOCH)
        .expect("a time after 1970")
        .as_secs();
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days to a civil date (Howard Hinnant's days_from_civil, inverted).
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        DAYS[(days % 7) as usize],
        MONTHS[(month - 1) as usize],
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}
