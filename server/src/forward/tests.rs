//! Lanes against stand-in leaders: plain sockets this test reads and
//! answers by hand, so that what went over the wire, and when, is seen.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::*;

async fn stand_in() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

fn view_leading_to(leader: Option<SocketAddr>) -> Arc<ClusterView> {
    let view = Arc::new(ClusterView::default());
    name_leader(&view, leader);
    view
}

fn name_leader(view: &ClusterView, leader: Option<SocketAddr>) {
    *view.leader_tcp.lock().unwrap() = leader;
}

/// Reads from `stream` until what it received ends with `end`.
async fn read_until(stream: &mut TcpStream, end: &[u8]) -> Vec<u8> {
    let mut got = Vec::new();
    while !got.ends_with(end) {
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed after {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    got
}

const SECRET: [u8; SECRET_BYTES] = [5; SECRET_BYTES];

/// Accepts a lane's connection and answers its proof of the cluster
/// secret as a leader does: a challenge, then `OK` for the right proof.
async fn accept_link(listener: &TcpListener) -> TcpStream {
    let (mut stream, _) = listener.accept().await.unwrap();
    assert_eq!(read_until(&mut stream, b"\r\n").await, b"forwarder\r\n");
    let challenge = [3u8; data::admin_proof::CHALLENGE_BYTES];
    let hex = data::admin_proof::to_hex(&challenge);
    stream
        .write_all(format!("CHALLENGE {hex}\r\n").as_bytes())
        .await
        .unwrap();
    let line = read_until(&mut stream, b"\r\n").await;
    let proof = crate::auth::forwarder_proof(&SECRET, &challenge);
    let expected = format!("forwarder {}\r\n", data::admin_proof::to_hex(&proof));
    assert_eq!(String::from_utf8(line).unwrap(), expected);
    stream.write_all(b"OK\r\n").await.unwrap();
    stream
}

async fn submit(
    link: &LeaderLink,
    view: &Arc<ClusterView>,
    raw: &'static str,
    expect: Expect,
    noreply: bool,
    read_only: bool,
) -> oneshot::Receiver<Relayed> {
    let raw = Bytes::from_static(raw.as_bytes());
    link.submit(0, view, raw, Framing::Text(expect), noreply, read_only)
        .await
}

fn reply(text: &'static str) -> Relayed {
    Relayed::Reply(Bytes::from_static(text.as_bytes()))
}

/// Requests queued together leave together, before any reply came back,
/// and each reply goes to its own request, noreply ones included.
#[tokio::test]
async fn requests_are_pipelined_and_answered_in_order() {
    let (listener, addr) = stand_in().await;
    let view = view_leading_to(Some(addr));
    let link = LeaderLink::new(Some(SECRET), None);
    // Queued before the lane's task first runs (this runtime has one
    // thread): one batch.
    let a = submit(&link, &view, "get a\r\n", Expect::Retrieval, false, true).await;
    let b = submit(
        &link,
        &view,
        "set b 0 0 1 noreply\r\nx\r\n",
        Expect::Line,
        true,
        false,
    )
    .await;
    let c = submit(&link, &view, "get c\r\n", Expect::Retrieval, false, true).await;
    let mut leader = accept_link(&listener).await;
    let got = read_until(&mut leader, b"get c\r\n").await;
    assert_eq!(
        got, b"get a\r\nset b 0 0 1 noreply\r\nx\r\nget c\r\n",
        "no barrier: the batch ends with a request that has a reply"
    );
    leader
        .write_all(b"VALUE a 0 1\r\n1\r\nEND\r\nEND\r\n")
        .await
        .unwrap();
    assert_eq!(a.await.unwrap(), reply("VALUE a 0 1\r\n1\r\nEND\r\n"));
    assert_eq!(b.await.unwrap(), reply(""));
    assert_eq!(c.await.unwrap(), reply("END\r\n"));
}

/// A batch of noreply requests costs one barrier, not one per request, and
/// they are done when its reply arrives.
#[tokio::test]
async fn a_batch_ending_in_noreply_gets_one_barrier() {
    let (listener, addr) = stand_in().await;
    let view = view_leading_to(Some(addr));
    let link = LeaderLink::new(Some(SECRET), None);
    let mut sets = Vec::new();
    for raw in [
        "delete a noreply\r\n",
        "delete b noreply\r\n",
        "delete c noreply\r\n",
    ] {
        sets.push(submit(&link, &view, raw, Expect::Line, true, false).await);
    }
    let mut leader = accept_link(&listener).await;
    let got = read_until(&mut leader, b"version\r\n").await;
    assert_eq!(
        got,
        b"delete a noreply\r\ndelete b noreply\r\ndelete c noreply\r\nversion\r\n"
    );
    leader.write_all(b"VERSION 1.6\r\n").await.unwrap();
    for set in sets {
        assert_eq!(set.await.unwrap(), reply(""));
    }
}

/// The leader fails with a write and a read in flight: the write may have
/// been executed (outcome unknown); the read is sent to the next leader.
#[tokio::test]
async fn a_failed_leader_loses_no_read_and_owns_up_to_the_writes() {
    let (first, first_addr) = stand_in().await;
    let (second, second_addr) = stand_in().await;
    let view = view_leading_to(Some(first_addr));
    let link = LeaderLink::new(Some(SECRET), None);
    let write = submit(&link, &view, "incr n 1\r\n", Expect::Line, false, false).await;
    let read = submit(&link, &view, "get r\r\n", Expect::Retrieval, false, true).await;
    let mut leader = accept_link(&first).await;
    read_until(&mut leader, b"get r\r\n").await;
    name_leader(&view, Some(second_addr));
    drop(leader);
    assert_eq!(
        write.await.unwrap(),
        Relayed::Failed(errors::OUTCOME_UNKNOWN)
    );
    let mut leader = accept_link(&second).await;
    let got = read_until(&mut leader, b"get r\r\n").await;
    assert_eq!(got, b"get r\r\n");
    leader.write_all(b"END\r\n").await.unwrap();
    assert_eq!(read.await.unwrap(), reply("END\r\n"));
}

/// When the leader changes, what was sent to the former one is answered
/// first; a later request goes to the new one, never the former.
#[tokio::test]
async fn a_new_leader_gets_requests_after_the_former_answered() {
    let (first, first_addr) = stand_in().await;
    let (second, second_addr) = stand_in().await;
    let view = view_leading_to(Some(first_addr));
    let link = LeaderLink::new(Some(SECRET), None);
    let before = submit(
        &link,
        &view,
        "set k 0 0 1\r\n1\r\n",
        Expect::Line,
        false,
        false,
    )
    .await;
    let mut former = accept_link(&first).await;
    read_until(&mut former, b"1\r\n").await;
    name_leader(&view, Some(second_addr));
    let after = submit(
        &link,
        &view,
        "set k 0 0 1\r\n2\r\n",
        Expect::Line,
        false,
        false,
    )
    .await;
    former.write_all(b"STORED\r\n").await.unwrap();
    assert_eq!(before.await.unwrap(), reply("STORED\r\n"));
    let mut leader = accept_link(&second).await;
    let got = read_until(&mut leader, b"2\r\n").await;
    assert_eq!(got, b"set k 0 0 1\r\n2\r\n");
    leader.write_all(b"STORED\r\n").await.unwrap();
    assert_eq!(after.await.unwrap(), reply("STORED\r\n"));
    // The lane left the former leader without sending it anything more.
    let mut rest = Vec::new();
    former.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}

/// With no leader named, a request waits its bounded time, then gets the
/// error line.
#[tokio::test]
async fn without_a_leader_a_request_gets_no_leader_available() {
    let view = view_leading_to(None);
    let link = LeaderLink::new(Some(SECRET), None);
    let write = submit(&link, &view, "delete k\r\n", Expect::Line, false, false).await;
    assert_eq!(write.await.unwrap(), Relayed::Failed(errors::NO_LEADER));
}

/// A leader that refuses the proof gets nothing forwarded: the request
/// waits its bounded time for a leader that accepts, then gets the error
/// line.
#[tokio::test]
async fn a_leader_that_refuses_the_proof_gets_no_request() {
    let (listener, addr) = stand_in().await;
    let view = view_leading_to(Some(addr));
    let link = LeaderLink::new(Some(SECRET), None);
    let write = submit(&link, &view, "delete k\r\n", Expect::Line, false, false).await;
    let (mut leader, _) = listener.accept().await.unwrap();
    read_until(&mut leader, b"forwarder\r\n").await;
    let challenge = data::admin_proof::to_hex(&[1u8; data::admin_proof::CHALLENGE_BYTES]);
    leader
        .write_all(format!("CHALLENGE {challenge}\r\n").as_bytes())
        .await
        .unwrap();
    read_until(&mut leader, b"\r\n").await;
    leader
        .write_all(data::protocol::auth::replies::BAD_PROOF.as_bytes())
        .await
        .unwrap();
    assert_eq!(write.await.unwrap(), Relayed::Failed(errors::NO_LEADER));
    // The lane hung up after the refusal and sent nothing more.
    let mut rest = Vec::new();
    let _ = leader.read_to_end(&mut rest).await;
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
}
