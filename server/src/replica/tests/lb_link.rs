//! Registration and silence reports to the LB.

use super::*;

fn advertised() -> Advertised {
    Advertised {
        tcp: addr(11),
        udp: addr(12),
    }
}

fn registers(messages: &[Message]) -> usize {
    messages
        .iter()
        .filter(|m| matches!(m, Message::Register { .. }))
        .count()
}

#[test]
fn a_server_registers_every_interval_until_the_lb_answers() {
    let mut g = Group::new(&[1, 2, 3]);
    let mut link = LbLink::default();
    let core = &g.node(1).replica;
    let tick =
        |link: &mut LbLink, now| link.on_tick(core, now, LogIndex(0), 1000, 100, advertised());
    assert_eq!(registers(&tick(&mut link, 5_000)), 1);
    assert_eq!(registers(&tick(&mut link, 5_050)), 0, "within the interval");
    assert_eq!(registers(&tick(&mut link, 5_100)), 1);
    assert!(
        !link.received(ServerId(2), &Message::Registered),
        "not the LB"
    );
    assert_eq!(registers(&tick(&mut link, 5_200)), 1);
    assert!(!link.received(ServerId::LB, &Message::Registered));
    assert_eq!(registers(&tick(&mut link, 5_300)), 0, "registered");
}

#[test]
fn a_silent_leader_is_reported_once_per_silence() {
    let mut g = Group::new(&[1, 2, 3]);
    g.elect(1, 1);
    let now = g.now_ms;
    let mut link = LbLink::default();
    link.received(ServerId::LB, &Message::Registered);
    let follower = &g.node(2).replica;
    let statuses = |messages: Vec<Message>| {
        messages
            .iter()
            .filter(|m| matches!(m, Message::Status { .. }))
            .count()
    };
    let mut tick = |now| link.on_tick(follower, now, LogIndex(0), 1000, 100, advertised());
    assert_eq!(
        statuses(tick(now + 500)),
        0,
        "heard from within the timeout"
    );
    assert_eq!(statuses(tick(now + 1_500)), 1, "silent past the timeout");
    assert_eq!(statuses(tick(now + 1_600)), 0, "reported once");
}
