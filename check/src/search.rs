//! The search for a linearization of one key's ops (Wing & Gong's algorithm
//! with Lowe's memoization, as in Porcupine).
//!
//! It owns the order in which ops may take effect: an op may be linearized
//! next only if every op that completed before its invocation already is;
//! pending ops may go anywhere after their invocation or nowhere. It must not
//! know memcached's semantics (that is [`crate::model`]) or other keys (the
//! crate root splits the history). Called by [`crate::check_with`], once per
//! key.
//!
//! The search is a depth-first walk over (linearized set, model state),
//! remembering every pair it has entered: two paths that linearized the same
//! ops and reached the same state have the same futures, so the second is cut.
//! Each pair entered is one step; past the step budget the search gives up
//! rather than guess.

use std::collections::HashSet;

use crate::bits::Bits;
use crate::model::{Effect, Observed, Refusal, State};

/// One op of the key, ready for the search.
#[derive(Clone, Debug)]
pub(crate) struct KeyOp {
    /// Where the op is in the caller's history.
    pub(crate) index: usize,
    pub(crate) invoked_ns: u64,
    pub(crate) action: Action,
}

#[derive(Clone, Debug)]
pub(crate) enum Action {
    Completed {
        completed_ns: u64,
        observed: Observed,
    },
    /// Pending reads are left out before the search: they constrain nothing.
    Pending(Effect),
}

impl KeyOp {
    fn completed_ns(&self) -> Option<u64> {
        match &self.action {
            Action::Completed { completed_ns, .. } => Some(*completed_ns),
            Action::Pending(_) => None,
        }
    }

    /// The state after this op takes effect in `state`; `Err(None)` for a
    /// pending op that would change nothing there.
    fn apply(&self, state: &State) -> Result<State, Option<Refusal>> {
        match &self.action {
            Action::Completed { observed, .. } => state.step(observed).map_err(Some),
            Action::Pending(effect) => state.take_effect(effect).ok_or(None),
        }
    }
}

/// Why a completed op could not come next after the longest prefix found.
#[derive(Clone, Debug)]
pub(crate) struct Stuck {
    pub(crate) index: usize,
    /// `None`: the op could take effect there, but nothing consistent follows.
    pub(crate) refusal: Option<Refusal>,
}

/// The deepest point the search reached on a key with no linearization.
#[derive(Clone, Debug)]
pub(crate) struct DeadEnd {
    /// History indexes of the ops linearized, in order.
    pub(crate) prefix: Vec<usize>,
    /// The key's state after them.
    pub(crate) state: State,
    /// The completed ops that could have come next, and why none did.
    pub(crate) stuck: Vec<Stuck>,
}

#[derive(Clone, Debug)]
pub(crate) enum Found {
    Linearizable,
    NotLinearizable(DeadEnd),
    StepLimit,
}

/// What the memo remembers of a visited point: the linearized set (in its
/// compact form) and the key's state there.
type MemoKey = ((u32, Box<[u64]>), State);

struct Frame {
    linearized: Bits,
    state: State,
    completed_done: usize,
    /// The op whose linearization entered this frame (none for the root).
    via: Option<usize>,
    /// Successors still to try, the one to try first last.
    successors: Vec<(usize, State)>,
}

/// The ops of one key, ordered for the search.
pub(crate) struct KeySearch {
    /// Sorted by invocation time, then history index.
    ops: Vec<KeyOp>,
    /// Positions in `ops` of the completed ops, by completion time.
    by_completion: Vec<usize>,
    uniques: usize,
}

impl KeySearch {
    /// `uniques`: how many distinct `UniqueId`s occur in `ops`.
    pub(crate) fn new(mut ops: Vec<KeyOp>, uniques: usize) -> KeySearch {
        ops.sort_by_key(|op| (op.invoked_ns, op.index));
        let mut by_completion: Vec<usize> = (0..ops.len())
            .filter(|&i| ops[i].completed_ns().is_some())
            .collect();
        by_completion.sort_by_key(|&i| (ops[i].completed_ns(), i));
        KeySearch {
            ops,
            by_completion,
            uniques,
        }
    }

    /// Ops that may be linearized next: not yet linearized, and invoked no
    /// later than the earliest completion among the completed ops not yet
    /// linearized (an op completed strictly before another's invocation must
    /// precede it). Equal times count as concurrent.
    fn eligible<'a>(&'a self, linearized: &'a Bits) -> impl Iterator<Item = usize> + 'a {
        let horizon_ns = self
            .by_completion
            .iter()
            .find(|&&i| !linearized.get(i))
            .and_then(|&i| self.ops[i].completed_ns())
            .unwrap_or(u64::MAX);
        (0..self.ops.len())
            .take_while(move |&i| self.ops[i].invoked_ns <= horizon_ns)
            .filter(move |&i| !linearized.get(i))
    }

    fn successors(&self, linearized: &Bits, state: &State) -> Vec<(usize, State)> {
        let mut successors: Vec<(usize, State)> = self
            .eligible(linearized)
            .filter_map(|i| self.ops[i].apply(state).ok().map(|next| (i, next)))
            .collect();
        // Try ops in invocation order: real executions mostly take effect so.
        successors.reverse();
        successors
    }

    /// Searches with at most `steps_max` steps; returns the verdict and the
    /// steps taken.
    pub(crate) fn run(&self, steps_max: u64) -> (Found, u64) {
        let completed_total = self.by_completion.len();
        if completed_total == 0 {
            return (Found::Linearizable, 0);
        }
        let root_linearized = Bits::new(self.ops.len());
        let root_state = State::new(self.uniques);
        let root = Frame {
            successors: self.successors(&root_linearized, &root_state),
            linearized: root_linearized,
            state: root_state,
            completed_done: 0,
            via: None,
        };
        let mut best = (Vec::new(), root.linearized.clone(), root.state.clone());
        let mut stack = vec![root];
        let mut memo: HashSet<MemoKey> = HashSet::new();
        let mut steps = 0u64;
        while let Some(top) = stack.last_mut() {
            let Some((i, state)) = top.successors.pop() else {
                stack.pop();
                continue;
            };
            let mut linearized = top.linearized.clone();
            linearized.set(i);
            let completed_done =
                top.completed_done + usize::from(self.ops[i].completed_ns().is_some());
            if completed_done == completed_total {
                // Pending ops not placed yet are taken never to have happened.
                return (Found::Linearizable, steps);
            }
            if !memo.insert((linearized.memo_form(), state.clone())) {
                continue;
            }
            steps += 1;
            if steps > steps_max {
                return (Found::StepLimit, steps_max);
            }
            let frame = Frame {
                successors: self.successors(&linearized, &state),
                linearized,
                state,
                completed_done,
                via: Some(i),
            };
            stack.push(frame);
            if stack.len() > best.0.len() + 1 {
                let top = stack.last().expect("a frame was just pushed");
                best = (
                    stack.iter().filter_map(|f| f.via).collect(),
                    top.linearized.clone(),
                    top.state.clone(),
                );
            }
        }
        let (prefix, linearized, state) = best;
        let stuck = self
            .eligible(&linearized)
            .filter(|&i| self.ops[i].completed_ns().is_some())
            .map(|i| Stuck {
                index: self.ops[i].index,
                refusal: self.ops[i].apply(&state).err().flatten(),
            })
            .collect();
        let prefix = prefix.into_iter().map(|i| self.ops[i].index).collect();
        let dead_end = DeadEnd {
            prefix,
            state,
            stuck,
        };
        (Found::NotLinearizable(dead_end), steps)
    }
}
