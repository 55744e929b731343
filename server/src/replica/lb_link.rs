//! The host's dealings with the LB, written once for every host (the
//! replication driver and the simulator): registering until the LB answers,
//! reporting a silent leader the moment the election timeout passes rather
//! than at the LB's next heartbeat (failover starts sooner), and answering
//! each LB heartbeat with the core's status.

use std::net::SocketAddr;

use data::frame::{LogIndex, Message, Role, ServerId};

use super::Replica;

/// Where this server is reached, as it registers with the LB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Advertised {
    /// Its memcached port.
    pub tcp: SocketAddr,
    /// Its replication port.
    pub udp: SocketAddr,
}

/// Registration and silence reports of one server.
#[derive(Debug, Default)]
pub struct LbLink {
    /// The LB answered a registration or sent a heartbeat.
    registered: bool,
    last_register_ms: u64,
    /// The leader's silence was reported already.
    reported_silence: bool,
}

impl LbLink {
    /// A frame from `from` arrived, before the core takes it in. Returns
    /// whether it is an LB heartbeat, which the host answers with the
    /// core's [`Replica::status`] once the core took it in.
    pub fn received(&mut self, from: ServerId, message: &Message) -> bool {
        if from != ServerId::LB {
            return false;
        }
        match message {
            Message::Registered => {
                self.registered = true;
                false
            }
            Message::Heartbeat { .. } => {
                self.registered = true;
                true
            }
            _ => false,
        }
    }

    /// What to tell the LB at a tick, in order: a leader silent for
    /// `election_timeout_ms` (once per silence), then a registration every
    /// `register_every_ms` until the LB has answered.
    pub fn on_tick(
        &mut self,
        core: &Replica,
        now_ms: u64,
        applied: LogIndex,
        election_timeout_ms: u64,
        register_every_ms: u64,
        advertised: Advertised,
    ) -> Vec<Message> {
        let mut to_lb = Vec::new();
        let silent = u64::from(core.leader_contact_ms(now_ms)) > election_timeout_ms;
        if silent && !self.reported_silence && core.role() != Role::Leader {
            self.reported_silence = true;
            to_lb.push(core.status(now_ms, applied));
        } else if !silent {
            self.reported_silence = false;
        }
        if !self.registered && now_ms >= self.last_register_ms + register_every_ms {
            self.last_register_ms = now_ms;
            to_lb.push(Message::Register {
                tcp: advertised.tcp,
                udp: advertised.udp,
            });
        }
        to_lb
    }
}
