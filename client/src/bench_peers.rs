//! The other systems `client bench --protocol` measures durable writes on,
//! so that store's figures sit next to theirs from the same load generator:
//! Redis (`SET` followed by `WAIT <replicas> 0`, in RESP) and etcd (a put
//! through its v3 HTTP/JSON gateway, `POST /v3/kv/put`, over keep-alive
//! HTTP/1.1).
//!
//! The encoders and reply scanners are pure functions of bytes with named
//! limits, checked before anything is buffered past them. [`PeerConnection`]
//! is the one owner of a socket to such a server: it queues one "set" per
//! op (for Redis that is the SET and WAIT pair, sent together), flushes, and
//! turns each complete reply into a [`Status`] the bench scores like a
//! memcached reply (`Stored` or `ServerError`). It knows nothing of timing
//! or workloads; `bench` drives it. Only sets are spoken: these modes exist
//! to measure replicated, durable writes.

use std::net::SocketAddr;

use bytes::{Buf, BytesMut};
use data::protocol::client::Status;
use tokio::net::TcpStream;

use crate::connection::READ_CHUNK_BYTES;
use crate::error::{Error, Result};

/// Longest RESP line (status, error, integer or bulk header) accepted.
pub const RESP_LINE_BYTES_MAX: usize = 64 * 1024;
/// Largest RESP bulk string accepted in a reply.
pub const RESP_BULK_BYTES_MAX: usize = 1024 * 1024;
/// Longest HTTP status line plus headers accepted.
pub const HTTP_HEAD_BYTES_MAX: usize = 16 * 1024;
/// Largest HTTP response body accepted (etcd's put reply is ~150 bytes).
pub const HTTP_BODY_BYTES_MAX: usize = 1024 * 1024;
/// Longest chunk-size line in a chunked body.
pub const HTTP_CHUNK_LINE_BYTES_MAX: usize = 1024;
/// Error text kept from a failed reply, for the report.
pub const ERROR_TEXT_BYTES_MAX: usize = 200;

/// Which peer protocol a [`PeerConnection`] speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerProtocol {
    /// Redis: `SET key value` then `WAIT replicas 0`; the op is done when
    /// WAIT answers that at least `replicas` replicas have the write.
    RedisSetWait { replicas: u32 },
    /// etcd v3 gateway: `POST /v3/kv/put` with base64 key and value; done
    /// on `200 OK`, which etcd sends once the put is committed by a quorum
    /// (fsynced in each member's WAL).
    EtcdPut,
}

/// A reply the scanners cannot accept: the stream is out of step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireError(pub String);

/// One RESP reply, as much of it as the bench needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RespReply {
    /// `+OK` and other simple strings.
    Simple(String),
    /// `-ERR ...`
    Error(String),
    Integer(i64),
    /// `$n`: the length, or `None` for the null bulk `$-1`.
    Bulk(Option<usize>),
}

/// `SET key value` then `WAIT replicas 0`, as RESP arrays.
pub fn encode_redis_set_wait(buf: &mut BytesMut, key: &[u8], value: &[u8], replicas: u32) {
    let mut number = itoa_buf();
    buf.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
    bulk(buf, key);
    bulk(buf, value);
    buf.extend_from_slice(b"*3\r\n$4\r\nWAIT\r\n");
    bulk(buf, decimal(&mut number, u64::from(replicas)));
    bulk(buf, b"0");
}

fn bulk(buf: &mut BytesMut, bytes: &[u8]) {
    let mut number = itoa_buf();
    buf.extend_from_slice(b"$");
    buf.extend_from_slice(decimal(&mut number, bytes.len() as u64));
    buf.extend_from_slice(b"\r\n");
    buf.extend_from_slice(bytes);
    buf.extend_from_slice(b"\r\n");
}

/// Room for the decimal digits of any u64.
fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

fn decimal(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// The RESP reply at the start of `buf` and its length; `None` if it has not
/// fully arrived.
pub fn scan_resp(buf: &[u8]) -> std::result::Result<Option<(RespReply, usize)>, WireError> {
    let Some(nl) = find_crlf(buf, RESP_LINE_BYTES_MAX)? else {
        return Ok(None);
    };
    let line = &buf[..nl];
    let after = nl + 2;
    let (&kind, rest) = line
        .split_first()
        .ok_or_else(|| WireError("empty RESP line".into()))?;
    let text = || String::from_utf8_lossy(rest).into_owned();
    let reply = match kind {
        b'+' => RespReply::Simple(text()),
        b'-' => RespReply::Error(text()),
        b':' => RespReply::Integer(
            text()
                .parse()
                .map_err(|_| WireError(format!("bad RESP integer {:?}", text())))?,
        ),
        b'$' => {
            let len: i64 = text()
                .parse()
                .map_err(|_| WireError(format!("bad RESP bulk length {:?}", text())))?;
            if len < 0 {
                return Ok(Some((RespReply::Bulk(None), after)));
            }
            let len = usize::try_from(len)
                .ok()
                .filter(|&n| n <= RESP_BULK_BYTES_MAX)
                .ok_or_else(|| WireError(format!("RESP bulk of {len} bytes is too large")))?;
            let end = after + len + 2;
            if buf.len() < end {
                return Ok(None);
            }
            if &buf[after + len..end] != b"\r\n" {
                return Err(WireError("RESP bulk not followed by \\r\\n".into()));
            }
            return Ok(Some((RespReply::Bulk(Some(len)), end)));
        }
        other => {
            return Err(WireError(format!(
                "unexpected RESP reply type {:?}",
                other as char
            )))
        }
    };
    Ok(Some((reply, after)))
}

/// Offset of the first `\r\n` in `buf`, looking no further than `max`
/// bytes; an error if none is within reach.
fn find_crlf(buf: &[u8], max: usize) -> std::result::Result<Option<usize>, WireError> {
    let window = &buf[..buf.len().min(max + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(at) => Ok(Some(at)),
        None if buf.len() > max + 1 => Err(WireError(format!("line longer than {max} bytes"))),
        None => Ok(None),
    }
}

/// Standard base64 with padding (RFC 4648 §4), as etcd's gateway wants for
/// `bytes` fields.
pub fn base64_into(out: &mut Vec<u8>, bytes: &[u8]) {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(ALPHABET[(n >> 18) as usize & 63]);
        out.push(ALPHABET[(n >> 12) as usize & 63]);
        out.push(if chunk.len() > 1 {
            ALPHABET[(n >> 6) as usize & 63]
        } else {
            b'='
        });
        out.push(if chunk.len() > 2 {
            ALPHABET[n as usize & 63]
        } else {
            b'='
        });
    }
}

/// `POST /v3/kv/put` with `{"key":..,"value":..}` in base64. `scratch` is
/// reused for the body so the per-op path does not allocate once warm.
pub fn encode_etcd_put(
    buf: &mut BytesMut,
    scratch: &mut Vec<u8>,
    host: &str,
    key: &[u8],
    value: &[u8],
) {
    scratch.clear();
    scratch.extend_from_slice(b"{\"key\":\"");
    base64_into(scratch, key);
    scratch.extend_from_slice(b"\",\"value\":\"");
    base64_into(scratch, value);
    scratch.extend_from_slice(b"\"}");
    let mut number = itoa_buf();
    buf.extend_from_slice(b"POST /v3/kv/put HTTP/1.1\r\nHost: ");
    buf.extend_from_slice(host.as_bytes());
    buf.extend_from_slice(b"\r\nContent-Type: application/json\r\nContent-Length: ");
    buf.extend_from_slice(decimal(&mut number, scratch.len() as u64));
    buf.extend_from_slice(b"\r\n\r\n");
    buf.extend_from_slice(scratch);
}

/// A complete HTTP response: its status code, where its body lies (for a
/// chunked body, the first chunk's data only; enough for an error message)
/// and its total length.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpResponse {
    pub code: u16,
    pub body: std::ops::Range<usize>,
    pub len: usize,
}

/// The HTTP/1.1 response at the start of `buf`; `None` if it has not fully
/// arrived. Bodies are framed by `Content-Length` or chunked encoding; a
/// response framed by closing the connection is refused (it cannot be
/// followed by another on a keep-alive connection).
pub fn scan_http(buf: &[u8]) -> std::result::Result<Option<HttpResponse>, WireError> {
    let window = &buf[..buf.len().min(HTTP_HEAD_BYTES_MAX)];
    let Some(head_len) = window.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() >= HTTP_HEAD_BYTES_MAX {
            return Err(WireError(format!(
                "HTTP head longer than {HTTP_HEAD_BYTES_MAX} bytes"
            )));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_len])
        .map_err(|_| WireError("HTTP head is not UTF-8".into()))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut words = status_line.splitn(3, ' ');
    let (Some(version), Some(code)) = (words.next(), words.next()) else {
        return Err(WireError(format!("bad HTTP status line {status_line:?}")));
    };
    if !version.starts_with("HTTP/1.") {
        return Err(WireError(format!("bad HTTP status line {status_line:?}")));
    }
    let code: u16 = code
        .parse()
        .map_err(|_| WireError(format!("bad HTTP status line {status_line:?}")))?;
    let mut content_length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(WireError(format!("bad HTTP header {line:?}")));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            let n: usize = value
                .parse()
                .map_err(|_| WireError(format!("bad Content-Length {value:?}")))?;
            if n > HTTP_BODY_BYTES_MAX {
                return Err(WireError(format!("HTTP body of {n} bytes is too large")));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.eq_ignore_ascii_case("chunked");
            if !chunked {
                return Err(WireError(format!(
                    "unsupported Transfer-Encoding {value:?}"
                )));
            }
        }
    }
    let body_start = head_len + 4;
    // 1xx, 204 and 304 have no body.
    if code < 200 || code == 204 || code == 304 {
        return Ok(Some(HttpResponse {
            code,
            body: body_start..body_start,
            len: body_start,
        }));
    }
    if chunked {
        return scan_chunked(buf, body_start, code);
    }
    let Some(length) = content_length else {
        return Err(WireError(
            "HTTP response without Content-Length or chunked body".into(),
        ));
    };
    let end = body_start + length;
    if buf.len() < end {
        return Ok(None);
    }
    Ok(Some(HttpResponse {
        code,
        body: body_start..end,
        len: end,
    }))
}

/// A chunked body starting at `at`: chunks until the zero-size one, then
/// trailer lines until an empty one.
fn scan_chunked(
    buf: &[u8],
    mut at: usize,
    code: u16,
) -> std::result::Result<Option<HttpResponse>, WireError> {
    let mut first: Option<std::ops::Range<usize>> = None;
    let mut total = 0usize;
    loop {
        let Some(nl) = find_crlf(&buf[at..], HTTP_CHUNK_LINE_BYTES_MAX)? else {
            return Ok(None);
        };
        let line = std::str::from_utf8(&buf[at..at + nl])
            .map_err(|_| WireError("bad chunk size line".into()))?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16)
            .map_err(|_| WireError(format!("bad chunk size {line:?}")))?;
        total = total.saturating_add(size);
        if total > HTTP_BODY_BYTES_MAX {
            return Err(WireError("chunked HTTP body is too large".into()));
        }
        at += nl + 2;
        if size == 0 {
            break;
        }
        let end = at + size + 2;
        if buf.len() < end {
            return Ok(None);
        }
        if &buf[at + size..end] != b"\r\n" {
            return Err(WireError("chunk not followed by \\r\\n".into()));
        }
        first.get_or_insert(at..at + size);
        at = end;
    }
    // Trailers, bounded as head lines are.
    loop {
        let Some(nl) = find_crlf(&buf[at..], HTTP_HEAD_BYTES_MAX)? else {
            return Ok(None);
        };
        at += nl + 2;
        if nl == 0 {
            break;
        }
    }
    Ok(Some(HttpResponse {
        code,
        body: first.unwrap_or(at..at),
        len: at,
    }))
}

/// One TCP connection to a Redis or etcd server, sending only sets.
#[derive(Debug)]
pub struct PeerConnection {
    protocol: PeerProtocol,
    stream: TcpStream,
    /// `ip:port` for the HTTP Host header.
    host: String,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// Reused for the HTTP body while encoding.
    scratch: Vec<u8>,
    /// Ops sent whose reply has not been read.
    pending: usize,
    broken: bool,
    /// The first failed reply's text, for the report.
    error_text: Option<String>,
}

impl PeerConnection {
    /// Connects with TCP_NODELAY, as the memcached connection does.
    pub async fn connect(addr: SocketAddr, protocol: PeerProtocol) -> Result<PeerConnection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(PeerConnection {
            protocol,
            stream,
            host: addr.to_string(),
            read_buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            write_buf: BytesMut::with_capacity(READ_CHUNK_BYTES),
            scratch: Vec::new(),
            pending: 0,
            broken: false,
            error_text: None,
        })
    }

    pub fn pending(&self) -> usize {
        self.pending
    }

    /// The text of the first reply that was not a success, if any.
    pub fn error_text(&self) -> Option<&str> {
        self.error_text.as_deref()
    }

    /// Queues one set (for Redis: SET then WAIT); nothing is sent until
    /// [`PeerConnection::flush`].
    pub fn queue_set(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if self.broken {
            return Err(Error::Broken);
        }
        if self.pending >= crate::connection::PENDING_REQUESTS_MAX {
            return Err(Error::TooManyPending);
        }
        match self.protocol {
            PeerProtocol::RedisSetWait { replicas } => {
                encode_redis_set_wait(&mut self.write_buf, key, value, replicas)
            }
            PeerProtocol::EtcdPut => encode_etcd_put(
                &mut self.write_buf,
                &mut self.scratch,
                &self.host,
                key,
                value,
            ),
        }
        self.pending += 1;
        Ok(())
    }

    /// Sends everything queued, reading replies ahead while the socket is
    /// full so a deep pipeline cannot deadlock.
    pub async fn flush(&mut self) -> Result<()> {
        if self.broken {
            return Err(Error::Broken);
        }
        let result = self.flush_inner().await;
        self.check(result)
    }

    async fn flush_inner(&mut self) -> Result<()> {
        crate::connection::write_reading_ahead(
            &self.stream,
            &mut self.write_buf,
            &mut self.read_buf,
        )
        .await
    }

    /// Flushes, then waits for the oldest op's complete reply.
    pub async fn recv_status(&mut self) -> Result<Status> {
        if self.pending == 0 {
            return Err(Error::NothingPending);
        }
        self.flush().await?;
        loop {
            if let Some(status) = self.try_recv_status()? {
                return Ok(status);
            }
            self.read_buf.reserve(READ_CHUNK_BYTES);
            let read =
                tokio::io::AsyncReadExt::read_buf(&mut self.stream, &mut self.read_buf).await;
            if self.check(read.map_err(Error::from))? == 0 {
                self.broken = true;
                return Err(Error::Closed);
            }
        }
    }

    /// The oldest op's reply if it is already buffered: `Stored` on
    /// success, `ServerError` (text kept) otherwise. Never does I/O.
    pub fn try_recv_status(&mut self) -> Result<Option<Status>> {
        if self.broken {
            return Err(Error::Broken);
        }
        if self.pending == 0 {
            return Ok(None);
        }
        let scanned = match self.protocol {
            PeerProtocol::RedisSetWait { replicas } => scan_set_wait(&self.read_buf, replicas),
            PeerProtocol::EtcdPut => scan_http(&self.read_buf).map(|r| {
                r.map(|r| {
                    let failure = (r.code != 200).then(|| {
                        format!(
                            "HTTP {}: {}",
                            r.code,
                            String::from_utf8_lossy(&self.read_buf[r.body.clone()])
                        )
                    });
                    (failure, r.len)
                })
            }),
        };
        match scanned {
            Err(WireError(text)) => {
                self.broken = true;
                Err(Error::UnexpectedReply(text))
            }
            Ok(None) => Ok(None),
            Ok(Some((failure, used))) => {
                self.read_buf.advance(used);
                self.pending -= 1;
                match failure {
                    None => Ok(Some(Status::Stored)),
                    Some(mut text) => {
                        if self.error_text.is_none() {
                            text.truncate(ERROR_TEXT_BYTES_MAX);
                            self.error_text = Some(text);
                        }
                        Ok(Some(Status::ServerError))
                    }
                }
            }
        }
    }

    fn check<T>(&mut self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result {
            if e.is_fatal() {
                self.broken = true;
            }
        }
        result
    }
}

/// The SET and WAIT replies of one op: `None` inside when the SET answered
/// `+OK` and WAIT counted at least `replicas`, else the failure's text.
type Scanned = Option<(Option<String>, usize)>;

fn scan_set_wait(buf: &[u8], replicas: u32) -> std::result::Result<Scanned, WireError> {
    let Some((set, used)) = scan_resp(buf)? else {
        return Ok(None);
    };
    let Some((wait, more)) = scan_resp(&buf[used..])? else {
        return Ok(None);
    };
    let failure = match (set, wait) {
        (RespReply::Simple(ok), RespReply::Integer(n)) if ok == "OK" => {
            (n < i64::from(replicas)).then(|| format!("WAIT reached {n} of {replicas} replicas"))
        }
        (set, wait) => Some(format!("SET replied {set:?}, WAIT replied {wait:?}")),
    };
    Ok(Some((failure, used + more)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_set_wait_bytes() {
        let mut buf = BytesMut::new();
        encode_redis_set_wait(&mut buf, b"k1", b"hello", 2);
        assert_eq!(
            &buf[..],
            b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$5\r\nhello\r\n*3\r\n$4\r\nWAIT\r\n$1\r\n2\r\n$1\r\n0\r\n"
        );
    }

    #[test]
    fn resp_replies_scan_only_when_complete() {
        assert_eq!(
            scan_resp(b"+OK\r\n:1\r\n").unwrap(),
            Some((RespReply::Simple("OK".into()), 5))
        );
        assert_eq!(scan_resp(b"+OK\r").unwrap(), None);
        assert_eq!(
            scan_resp(b":12\r\n").unwrap(),
            Some((RespReply::Integer(12), 5))
        );
        assert_eq!(
            scan_resp(b"-ERR no\r\n").unwrap(),
            Some((RespReply::Error("ERR no".into()), 9))
        );
        assert_eq!(
            scan_resp(b"$3\r\nabc\r\n").unwrap(),
            Some((RespReply::Bulk(Some(3)), 9))
        );
        assert_eq!(scan_resp(b"$3\r\nab").unwrap(), None);
        assert_eq!(
            scan_resp(b"$-1\r\n").unwrap(),
            Some((RespReply::Bulk(None), 5))
        );
        assert!(scan_resp(b"$3\r\nabcX\r\n").is_err());
        assert!(scan_resp(b"*1\r\n").is_err());
        assert!(scan_resp(&vec![b'+'; RESP_LINE_BYTES_MAX + 10]).is_err());
    }

    #[test]
    fn set_wait_pairs_two_replies() {
        assert_eq!(scan_set_wait(b"+OK\r\n", 1).unwrap(), None);
        assert_eq!(scan_set_wait(b"+OK\r\n:2\r\n", 1).unwrap(), Some((None, 9)));
        let (failure, used) = scan_set_wait(b"+OK\r\n:0\r\n", 1).unwrap().unwrap();
        assert_eq!(used, 9);
        assert!(failure.unwrap().contains("0 of 1"));
        let (failure, _) = scan_set_wait(b"-READONLY x\r\n-READONLY x\r\n", 1)
            .unwrap()
            .unwrap();
        assert!(failure.unwrap().contains("READONLY"));
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            let mut out = Vec::new();
            base64_into(&mut out, plain.as_bytes());
            assert_eq!(out, encoded.as_bytes(), "{plain}");
        }
    }

    #[test]
    fn etcd_put_bytes() {
        let mut buf = BytesMut::new();
        let mut scratch = Vec::new();
        encode_etcd_put(&mut buf, &mut scratch, "127.0.0.1:2379", b"foo", b"bar");
        let body = "{\"key\":\"Zm9v\",\"value\":\"YmFy\"}";
        let expected = format!(
            "POST /v3/kv/put HTTP/1.1\r\nHost: 127.0.0.1:2379\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        assert_eq!(&buf[..], expected.as_bytes());
    }

    #[test]
    fn http_content_length_response() {
        let reply =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}HTTP";
        let r = scan_http(reply).unwrap().unwrap();
        assert_eq!(r.code, 200);
        assert_eq!(&reply[r.body.clone()], b"{}");
        assert_eq!(r.len, reply.len() - 4);
        assert_eq!(scan_http(&reply[..reply.len() - 6]).unwrap(), None);
        assert_eq!(scan_http(b"HTTP/1.1 200 OK\r\nContent-Le").unwrap(), None);
    }

    #[test]
    fn http_chunked_response() {
        let reply = b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbusy\r\n2;x=y\r\n!!\r\n0\r\n\r\n";
        let r = scan_http(reply).unwrap().unwrap();
        assert_eq!(r.code, 503);
        assert_eq!(&reply[r.body.clone()], b"busy");
        assert_eq!(r.len, reply.len());
        for cut in 1..reply.len() {
            assert_eq!(scan_http(&reply[..cut]).unwrap(), None, "cut at {cut}");
        }
    }

    /// A fake server that reads until `marker` was seen `ops` times, then
    /// sends `reply` once per op, a few bytes per write so the connection
    /// must put replies together from pieces.
    async fn fake_server(marker: &'static [u8], reply: &'static [u8], ops: usize) -> SocketAddr {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            socket.set_nodelay(true).unwrap();
            let mut seen = Vec::new();
            let mut chunk = [0u8; 4096];
            while seen.windows(marker.len()).filter(|w| *w == marker).count() < ops {
                let n = socket.read(&mut chunk).await.unwrap();
                assert!(n > 0, "client closed early");
                seen.extend_from_slice(&chunk[..n]);
            }
            let all: Vec<u8> = reply.repeat(ops);
            for piece in all.chunks(7) {
                socket.write_all(piece).await.unwrap();
                socket.flush().await.unwrap();
            }
        });
        addr
    }

    #[tokio::test]
    async fn redis_connection_pairs_set_and_wait_replies() {
        let addr = fake_server(b"WAIT", b"+OK\r\n:2\r\n", 3).await;
        let protocol = PeerProtocol::RedisSetWait { replicas: 1 };
        let mut conn = PeerConnection::connect(addr, protocol).await.unwrap();
        for key in [b"a", b"b", b"c"] {
            conn.queue_set(key, b"value").unwrap();
        }
        for _ in 0..3 {
            assert_eq!(conn.recv_status().await.unwrap(), Status::Stored);
        }
        assert_eq!(conn.pending(), 0);
        assert_eq!(conn.error_text(), None);
    }

    #[tokio::test]
    async fn etcd_connection_reads_keep_alive_responses() {
        let reply = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 13\r\n\r\n{\"header\":{}}";
        let addr = fake_server(b"POST ", reply, 2).await;
        let mut conn = PeerConnection::connect(addr, PeerProtocol::EtcdPut)
            .await
            .unwrap();
        conn.queue_set(b"k1", b"v").unwrap();
        conn.queue_set(b"k2", b"v").unwrap();
        assert_eq!(conn.recv_status().await.unwrap(), Status::Stored);
        assert_eq!(conn.recv_status().await.unwrap(), Status::Stored);
        assert_eq!(conn.pending(), 0);
    }

    #[tokio::test]
    async fn etcd_failure_keeps_the_reply_text() {
        let reply = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 9\r\n\r\nno leader";
        let addr = fake_server(b"POST ", reply, 1).await;
        let mut conn = PeerConnection::connect(addr, PeerProtocol::EtcdPut)
            .await
            .unwrap();
        conn.queue_set(b"k", b"v").unwrap();
        assert_eq!(conn.recv_status().await.unwrap(), Status::ServerError);
        assert_eq!(conn.error_text(), Some("HTTP 503: no leader"));
    }

    #[test]
    fn http_refuses_what_it_cannot_frame() {
        assert!(scan_http(b"HTTP/1.1 200 OK\r\n\r\n").is_err());
        assert!(scan_http(b"SSH-2.0 hi\r\n\r\n").is_err());
        assert!(scan_http(b"HTTP/1.1 200 OK\r\nContent-Length: 99999999\r\n\r\n").is_err());
        assert!(scan_http(&vec![b'a'; HTTP_HEAD_BYTES_MAX + 1]).is_err());
    }
}
