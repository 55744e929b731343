//! The keystore stream, both ends, between the cores of a group: what
//! arrives is the file, whatever the network did, and a stream ends with
//! the leadership it started in.

use super::*;
use crate::replica::snapshot_stream::{
    whole_file_ack, Chunk, FileAt, Outgoing, Received, Receiver, Senders, StreamShape,
    SNAPSHOT_RESEND_MS,
};

const SHAPE: StreamShape = StreamShape {
    chunk_bytes: 64,
    window_chunks: 4,
};

/// A file of `len` bytes that shows where each byte came from.
fn file_of(len: usize) -> Bytes {
    Bytes::from((0..len).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>())
}

/// Node 3 behind leader 1's compacted log, and a stream of `file`
/// (standing for the keystore through the compaction point) started.
fn stream_started(file: &Bytes) -> (Group, Senders<Bytes>, FileAt, Vec<Outgoing>) {
    let (mut g, commit, term) = node_3_behind_the_compacted_log();
    g.node(3).up = true;
    let at = FileAt {
        index: commit,
        term,
        total: file.len() as u64,
    };
    let mut senders = Senders::new(SHAPE);
    let now = g.now_ms;
    let leader = &g.node(1).replica;
    assert!(senders
        .under_way(leader, now, ServerId(3), addr(3), commit)
        .is_none());
    let out = senders.start(leader, now, ServerId(3), addr(3), at, file.clone());
    (g, senders, at, out)
}

fn chunk_of(g: &mut Group, out: Outgoing) -> Chunk {
    assert_eq!(out.to, ServerId(3));
    let term = g.node(1).replica.term();
    Chunk::of(ServerId(1), term, out.message).expect("a stream sends chunks")
}

#[test]
fn a_stream_delivers_the_file_through_loss_and_reordering() {
    let file = file_of(1000);
    let (mut g, mut senders, at, mut out) = stream_started(&file);
    assert_eq!(out.len(), 4, "one window of chunks");
    let mut receiver: Receiver<Vec<u8>> = Receiver::default();
    let mut whole = None;
    for round in 0..200 {
        // Every third chunk is lost and the rest arrive in reverse order.
        let mut acks = Vec::new();
        for (n, sent) in out.drain(..).rev().enumerate() {
            if (n + round) % 3 == 0 {
                continue;
            }
            let chunk = chunk_of(&mut g, sent);
            let now = g.now_ms;
            let applied = g.node(3).committed;
            match receiver
                .chunk(&mut g.node(3).replica, now, applied, chunk, || {
                    Ok(Vec::new())
                })
                .unwrap()
            {
                Received::Nothing => {}
                Received::Ack(ack) => acks.push(ack),
                Received::Whole { from, file, sink } => {
                    // The host installs it before the next chunk.
                    whole = Some((from, file, sink));
                    break;
                }
            }
        }
        if whole.is_some() {
            break;
        }
        for ack in acks {
            let Message::SnapshotAck {
                snapshot_index,
                offset,
            } = ack.message
            else {
                panic!("the follower acknowledges");
            };
            let (now, term) = (g.now_ms, g.node(1).replica.term());
            let leader = &mut g.node(1).replica;
            out.extend(senders.acked(leader, now, ServerId(3), term, snapshot_index, offset));
        }
        g.now_ms += SNAPSHOT_RESEND_MS;
        let now = g.now_ms;
        out.extend(senders.tick(&g.node(1).replica, now));
    }
    let (from, arrived, sink) = whole.expect("the whole file arrives");
    assert_eq!((from, arrived), (ServerId(1), at));
    assert_eq!(sink, file.to_vec(), "byte for byte");
    assert!(!receiver.is_receiving());
    // Installed: the acknowledgement of all of it ends the stream.
    let ack = whole_file_ack(&g.node(3).replica, from, arrived, true).unwrap();
    let Message::SnapshotAck { offset, .. } = ack.message else {
        panic!("the follower acknowledges");
    };
    assert_eq!(offset, 1000);
    let (now, term) = (g.now_ms, g.node(1).replica.term());
    let leader = &mut g.node(1).replica;
    assert!(senders
        .acked(leader, now, ServerId(3), term, at.index, offset)
        .is_empty());
    assert!(senders.is_empty());
}

#[test]
fn a_rejected_file_is_sent_again_from_the_start() {
    let file = file_of(300);
    let (mut g, mut senders, at, _) = stream_started(&file);
    let (now, term) = (g.now_ms, g.node(1).replica.term());
    let leader = &mut g.node(1).replica;
    let next = senders.acked(leader, now, ServerId(3), term, at.index, 256);
    assert_eq!(next.len(), 1, "the rest after 256 bytes");
    // The follower's whole file did not check: it acknowledges nothing.
    let rejected = whole_file_ack(&g.node(3).replica, ServerId(1), at, false).unwrap();
    let Message::SnapshotAck { offset, .. } = rejected.message else {
        panic!("the follower acknowledges");
    };
    let leader = &mut g.node(1).replica;
    let again = senders.acked(leader, now, ServerId(3), term, at.index, offset);
    let first = chunk_of(&mut g, again.into_iter().next().unwrap());
    assert_eq!(first.offset, 0, "the stream starts over");
}

/// A leader that stepped down and went on resending its stream in the new
/// term looked, to the new leader, like a second leader of that term (the
/// core's hard assertion stopped the new leader). Found by the simulator
/// once it ran this code.
#[test]
fn a_leader_that_stepped_down_ends_its_streams() {
    let file = file_of(1000);
    let (mut g, mut senders, _, _) = stream_started(&file);
    assert_eq!(senders.len(), 1);
    g.elect(2, 2);
    assert_eq!(g.node(1).replica.role(), Role::Follower);
    g.now_ms += SNAPSHOT_RESEND_MS;
    let now = g.now_ms;
    assert!(senders.tick(&g.node(1).replica, now).is_empty());
    assert!(senders.is_empty());
}
