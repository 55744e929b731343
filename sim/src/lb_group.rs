//! The LBs as one group (DESIGN §3c), as `lb::driver` runs them: each LB
//! is a replica of the LB group's log (a [`crate::node::Server`] with ids
//! after the data servers', electing its leader by vote), and the one that
//! leads the group, once its first entry of the term is committed and
//! applied, runs the election core ([`lb::core::Core`]) made from the
//! registry its state holds. Every state the core persists is proposed to
//! the group's log, and the actions after it wait until it is committed
//! (or are dropped with the core, if it is not). Frames the data servers
//! send to "the LB" reach every LB; the one without a core drops them.
//!
//! Checked here: an LB sends only under a registry it has seen committed
//! ("LB persist before send"), and a data term is issued once ever: every
//! Prepare of a data term comes from one LB's one leadership.

use std::collections::{BTreeMap, VecDeque};

use bytes::BytesMut;
use data::frame::{Message, Peer, Role, ServerId, Term};
use lb::core::{Action as LbAction, Core};
use lb::discovery::LbChange;
use lb::group::{registry_of, removal_committed, Peers, MEMBERS_KEY, REGISTRY_KEY};
use lb::registry::{self, DurableState};
use server::driver::Configuration;
use server::group_log::set_command;

use crate::world::{Packet, World};

/// The proposer an LB's registry writes are answered to (no client has
/// this index).
pub(crate) const REGISTRY_WRITER: usize = usize::MAX;

/// Frames an LB keeps while a registry write is in flight (the real
/// driver's socket buffer); more are dropped, as the kernel would.
const INBOX_MAX: usize = 256;

/// One LB's driver state.
#[derive(Debug, Default)]
pub(crate) struct LbMember {
    /// The election core, while this LB acts for the cluster.
    pub core: Option<Core>,
    /// The LB term the core was made in.
    leading: Option<Term>,
    /// The registry write in flight (its number) and the actions after it.
    writing: Option<u64>,
    held: VecDeque<LbAction>,
    /// Frames that arrived while a write was in flight.
    inbox: VecDeque<(u64, Term, Message)>,
    /// The data term of the registry this LB last saw committed.
    committed_term: Term,
    /// Registry writes proposed, to tell an answer from an older one.
    writes: u64,
    /// The LB group's list as this LB last applied it (`None`: the
    /// founders'), and whether it lacks this LB (`remove-lb`).
    list_seen: Option<Vec<u8>>,
    removed: bool,
    /// The list goes to the replica as its target on the next tick (this
    /// LB has just come to act).
    retarget: bool,
    /// A list write in flight (`add-lb`, `remove-lb`; its write number),
    /// and the spare LB the operator starts once it is committed.
    list_write: Option<(u64, Option<u64>)>,
}

impl LbMember {
    /// Stops acting: the core and everything it still meant to do go.
    fn depose(&mut self) {
        self.core = None;
        self.leading = None;
        self.writing = None;
        self.list_write = None;
        self.held.clear();
        self.inbox.clear();
    }
}

/// Who issued a data term: an LB, in one incarnation, in one LB term.
type Issuer = (u64, u32, Term);

impl World {
    /// LB `id` (a node of the LB group) looks at whether it leads the
    /// group: a core made once it does, dropped once it does not.
    fn follow_lb_leadership(&mut self, id: u64) {
        let now = self.server_now(id);
        let s = &self.servers[id as usize - 1];
        let leading = s
            .core()
            .filter(|c| c.role() == Role::Leader && c.is_serving())
            .filter(|c| s.applied() == c.commit_index())
            .map(|c| c.term());
        let member = self.lb_members.entry(id).or_default();
        if leading == member.leading {
            return;
        }
        if member.leading.is_some() {
            self.trace(|| format!("lb{id} no longer leads the LB group"));
        }
        self.lb_members.entry(id).or_default().depose();
        let Some(term) = leading else {
            return;
        };
        let value = self.servers[id as usize - 1].read(REGISTRY_KEY);
        let registry = match registry_of(value.as_deref()) {
            Ok(registry) => registry,
            Err(e) => {
                self.fail("registry decodes", format!("lb{id}: {e}"));
                return;
            }
        };
        let data_term = registry.term;
        self.trace(|| format!("lb{id} leads the LB group in t{term}: registry t{data_term}"));
        let member = self.lb_members.entry(id).or_default();
        member.core = Some(Core::new(Self::lb_config(), registry, now));
        member.leading = Some(term);
        member.committed_term = data_term;
        member.retarget = true;
    }

    /// The LB group as `lb::group::Peers` has it for LB `id`: its founders
    /// (the sim's LB node ids, in order), or the list its state holds.
    fn lb_peers(&mut self, id: u64) -> Result<Peers, String> {
        let founders = self.opts.servers as u64 + 1..=(self.opts.servers + self.opts.lbs) as u64;
        let founding = Peers {
            me: ServerId(id),
            members: founders
                .clone()
                .map(|f| Peer {
                    id: ServerId(f),
                    tcp: crate::world::tcp_addr(f),
                    udp: crate::world::udp_addr(f),
                })
                .collect(),
            next_id: founders.end() + 1,
            epoch: 0,
            joining: false,
        };
        match self.servers[id as usize - 1].read(MEMBERS_KEY) {
            None => Ok(founding),
            Some(list) => founding.with_list(&list).map_err(|e| e.to_string()),
        }
    }

    /// LB `id`'s driver follows the group's list as `lb::driver` does: the
    /// addresses to its replica, the target too while it acts; an LB the
    /// list took out stops once it does not lead.
    fn follow_lb_list(&mut self, id: u64) {
        if !self.opts.lb_changes || !self.servers[id as usize - 1].up {
            return;
        }
        let now = self.server_now(id);
        let value = self.servers[id as usize - 1].read(MEMBERS_KEY);
        let member = self.lb_members.entry(id).or_default();
        if value != member.list_seen || member.retarget {
            member.retarget = false;
            member.list_seen = value;
            let target = member.leading.is_some();
            let peers = match self.lb_peers(id) {
                Ok(peers) => peers,
                Err(e) => {
                    self.fail("LB list decodes", format!("lb{id}: {e}"));
                    return;
                }
            };
            self.lb_members.entry(id).or_default().removed = peers.removed();
            let ids: Vec<u64> = peers.members.iter().map(|m| m.id.0).collect();
            self.trace(|| {
                format!(
                    "lb{id} list epoch {} {ids:?} (target: {target})",
                    peers.epoch
                )
            });
            self.with_host(id, |host, _| {
                let core = host.core_mut();
                if target {
                    core.set_target_members(now, &peers.members);
                } else {
                    core.learn_members(&peers.members);
                }
                Ok(())
            });
        }
        // As lb::driver: once it does not lead and knows its removal is
        // committed (the others may need its vote until then).
        let done = self.servers[id as usize - 1].core().is_some_and(|c| {
            c.role() != Role::Leader && removal_committed(&Configuration::of(c), ServerId(id))
        });
        if self.lb_members.entry(id).or_default().removed && done {
            self.trace(|| format!("lb{id} removed from the LB group: stops"));
            self.crash_server(id);
            self.lb_retired.insert(id);
        }
    }

    /// The operator's `add-lb` (the next spare) or `remove-lb` (any LB, the
    /// acting one too) reaches the LB that acts, which takes it as
    /// `lb::driver` does: one change at a time, the new list committed in
    /// the group's log; a spare added is started once it is.
    pub(crate) fn lb_group_change(&mut self) {
        let Some(id) = self.acting_lb() else {
            return;
        };
        if self.lb_members.entry(id).or_default().writing.is_some() {
            return;
        }
        let Ok(peers) = self.lb_peers(id) else {
            return;
        };
        let Some(core) = self.servers[id as usize - 1].core() else {
            return;
        };
        let config = Configuration::of(core);
        let spare = peers.next_id;
        let add = self.rng.below(2) == 0 && self.lb_retired.contains(&spare);
        let change = if add {
            LbChange::Add(crate::world::tcp_addr(spare))
        } else {
            let at = self.rng.below(peers.members.len() as u64) as usize;
            LbChange::Remove(peers.members[at].tcp)
        };
        let Ok((next, changed)) = peers.plan(change, &config) else {
            return;
        };
        let member = self.lb_members.entry(id).or_default();
        member.writes += 1;
        let write = member.writes;
        if !self.propose_set(id, write, MEMBERS_KEY, next.encode()) {
            return;
        }
        let verb = if add { "add-lb" } else { "remove-lb" };
        self.trace(|| format!("FAULT {verb} n{changed} through lb{id} (write {write})"));
        let member = self.lb_members.entry(id).or_default();
        member.writing = Some(write);
        member.list_write = Some((write, add.then_some(changed.0)));
    }

    /// A tick of LB `id`'s driver (its replica ticked just before).
    pub(crate) fn lb_member_tick(&mut self, id: u64) {
        self.follow_lb_leadership(id);
        self.follow_lb_list(id);
        if !self.servers[id as usize - 1].up {
            return;
        }
        let now = self.server_now(id);
        let member = self.lb_members.entry(id).or_default();
        if member.writing.is_some() {
            return;
        }
        let Some(core) = member.core.as_mut() else {
            return;
        };
        let actions = core.tick(now);
        self.lb_member_actions(id, actions.into());
        // The operator, as with one LB: a removed server the acting LB
        // forgot is stopped and started again to rejoin.
        self.rejoin_removed();
    }

    /// A frame from data server `from` reaches LB `id`.
    pub(crate) fn lb_member_deliver(&mut self, id: u64, from: u64, term: Term, message: Message) {
        if !self.servers[id as usize - 1].up {
            return;
        }
        self.trace(|| format!("recv {from}->lb{id} t{term} {message:?}"));
        self.follow_lb_leadership(id);
        let member = self.lb_members.entry(id).or_default();
        if member.core.is_none() {
            return;
        }
        if member.writing.is_some() {
            if member.inbox.len() < INBOX_MAX {
                member.inbox.push_back((from, term, message));
            }
            return;
        }
        self.lb_member_receive(id, from, term, message);
    }

    fn lb_member_receive(&mut self, id: u64, from: u64, term: Term, message: Message) {
        let now = self.server_now(id);
        let header = crate::world::to_lb_header(from, term);
        let Some(core) = self.lb_members.entry(id).or_default().core.as_mut() else {
            return;
        };
        let actions = core.receive(now, &header, message);
        self.lb_member_actions(id, actions.into());
    }

    /// The operator's `remove-server` reaches the LB that acts, if any.
    pub(crate) fn lb_group_remove(&mut self, server: ServerId) -> bool {
        let Some(id) = self.acting_lb() else {
            return false;
        };
        let member = self.lb_members.entry(id).or_default();
        if member.writing.is_some() {
            return false;
        }
        let Some(Ok(actions)) = member.core.as_mut().map(|c| c.remove_server(server)) else {
            return false;
        };
        self.lb_member_actions(id, actions.into());
        true
    }

    /// The LB that runs a core, if one does (several may, for a moment: a
    /// deposed one that has not noticed yet; the highest LB term's).
    pub(crate) fn acting_lb(&self) -> Option<u64> {
        self.lb_members
            .iter()
            .filter(|(_, m)| m.core.is_some())
            .max_by_key(|(_, m)| m.leading)
            .map(|(id, _)| *id)
    }

    /// The core of the LB that acts, if any.
    pub(crate) fn acting_core(&mut self) -> Option<&mut Core> {
        let id = self.acting_lb()?;
        self.lb_members.get_mut(&id)?.core.as_mut()
    }

    /// The LB driver's rule in a group: a Persist is a registry write
    /// through the log; what comes after it waits for it to commit.
    pub(crate) fn lb_member_actions(&mut self, id: u64, mut actions: VecDeque<LbAction>) {
        while let Some(action) = actions.pop_front() {
            match action {
                LbAction::Persist(state) => {
                    let member = self.lb_members.entry(id).or_default();
                    // A list write in flight is no longer waited for: the
                    // operator does not hear (a spare added is not started;
                    // removing it undoes the add).
                    member.list_write = None;
                    member.writes += 1;
                    let write = member.writes;
                    let Ok(data) = registry::encode(&state) else {
                        self.fail("registry encodes", format!("lb{id}: {state:?}"));
                        return;
                    };
                    let taken = self.propose_set(id, write, REGISTRY_KEY, data);
                    let (term, leader) = (state.term, state.leader);
                    if !taken {
                        self.lb_members.entry(id).or_default().depose();
                        self.trace(|| format!("lb{id} registry write refused: stops acting"));
                        return;
                    }
                    self.trace(|| {
                        format!("lb{id} registry write {write}: t{term} leader {leader}")
                    });
                    let member = self.lb_members.entry(id).or_default();
                    if self.opts.bugs.lb_acts_before_commit {
                        // The deliberate bug: on at once, as if committed.
                        member.committed_term = member.committed_term.max(term);
                        continue;
                    }
                    member.writing = Some(write);
                    member.held = actions;
                    return;
                }
                LbAction::Send {
                    to, term, message, ..
                } => {
                    let member = self.lb_members.entry(id).or_default();
                    let committed = member.committed_term;
                    let issuer = (
                        id,
                        self.servers[id as usize - 1].incarnation,
                        member.leading.unwrap_or_default(),
                    );
                    if term > committed {
                        self.fail(
                            "LB persist before send",
                            format!(
                                "lb{id} sent in t{term} with a registry of t{committed} committed"
                            ),
                        );
                        return;
                    }
                    if matches!(message, Message::Prepare) && !self.issue_data_term(term, issuer) {
                        return;
                    }
                    self.send(id, to.0, Packet::FromLb { term, message });
                }
            }
        }
    }

    /// LB `id` proposes `key` set to `value` through its replica of the
    /// group's log (production's command), as write number `write`; false
    /// if its replica refused it (not leading).
    fn propose_set(&mut self, id: u64, write: u64, key: &'static [u8], value: Vec<u8>) -> bool {
        let command = set_command(key, value, self.now / 1000);
        let mut payload = BytesMut::with_capacity(command.encoded_len());
        command.encode(&mut payload);
        let payload = payload.freeze();
        let mut taken = false;
        self.with_host(id, |host, _| {
            taken = host
                .propose(payload.clone(), (REGISTRY_WRITER, write, payload))
                .is_ok();
            Ok(())
        });
        taken
    }

    /// Records that `issuer` sent a Prepare in data term `term`; false (and
    /// a violation) if another LB or leadership issued it before.
    fn issue_data_term(&mut self, term: Term, issuer: Issuer) -> bool {
        let first = *self.issued_terms.entry(term.0).or_insert(issuer);
        if first != issuer {
            self.fail(
                "data term issued once",
                format!(
                    "t{term} issued by lb{} (incarnation {}, LB t{}) and by lb{} (incarnation {}, LB t{})",
                    first.0, first.1, first.2, issuer.0, issuer.1, issuer.2
                ),
            );
            return false;
        }
        true
    }

    /// LB `id`'s registry write `write` committed (or not).
    pub(crate) fn lb_persisted(&mut self, id: u64, incarnation: u32, write: u64, committed: bool) {
        if self.servers[id as usize - 1].incarnation != incarnation {
            return;
        }
        let member = self.lb_members.entry(id).or_default();
        if member.writing != Some(write) {
            return;
        }
        member.writing = None;
        let list_write = member.list_write.take().filter(|(w, _)| *w == write);
        if let Some((_, start)) = list_write {
            // A list write: the operator's answer. Not committed (or not
            // known to be), it is asked again later, if at all.
            self.trace(|| format!("lb{id} list write {write} committed: {committed}"));
            if let Some(spare) = start.filter(|_| committed) {
                self.lb_retired.remove(&spare);
                self.boot_server(spare);
            }
            self.follow_lb_list(id);
        } else if !committed {
            member.depose();
            self.trace(|| format!("lb{id} registry write {write} not committed: stops acting"));
            return;
        }
        let value = self.servers[id as usize - 1].read(REGISTRY_KEY);
        let member = self.lb_members.entry(id).or_default();
        if let Ok(registry) = registry_of(value.as_deref()) {
            member.committed_term = member.committed_term.max(registry.term);
        }
        let held = std::mem::take(&mut member.held);
        if list_write.is_none() {
            self.trace(|| format!("lb{id} registry write {write} committed"));
        }
        self.lb_member_actions(id, held);
        loop {
            let member = self.lb_members.entry(id).or_default();
            if member.writing.is_some() || member.core.is_none() {
                return;
            }
            let Some((from, term, message)) = member.inbox.pop_front() else {
                return;
            };
            self.lb_member_receive(id, from, term, message);
        }
    }

    /// An LB crashed: its driver's state is gone with it.
    pub(crate) fn lb_member_crashed(&mut self, id: u64) {
        self.lb_members.entry(id).or_default().depose();
    }

    /// The registry the acting LB's core holds (its members), if one acts.
    pub(crate) fn acting_registry(&self) -> Option<&DurableState> {
        let id = self.acting_lb()?;
        self.lb_members.get(&id)?.core.as_ref().map(Core::durable)
    }

    /// After the quiet period: exactly one LB runs a core, and it leads
    /// the LB group.
    pub(crate) fn check_lb_liveness(&mut self) {
        let acting: Vec<u64> = self
            .lb_members
            .iter()
            .filter(|(_, m)| m.core.is_some())
            .map(|(id, _)| *id)
            .collect();
        let leads = |w: &World, id: u64| {
            w.servers[id as usize - 1]
                .core()
                .is_some_and(|c| c.role() == Role::Leader)
        };
        if acting.len() != 1 || !leads(self, acting[0]) {
            self.fail(
                "liveness",
                format!(
                    "after {} ms without faults, LBs acting: {acting:?}",
                    self.opts.settle_ms
                ),
            );
        }
    }
}

/// A map from data term to its issuer, kept by the world.
pub(crate) type IssuedTerms = BTreeMap<u64, Issuer>;
