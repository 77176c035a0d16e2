//! The operations of the state machine and how proptest generates them. Indices name the
//! fixed cast (`PEOPLE`, `DEVICES`, `BRIDGES`); times are relative to the simulated clock, so
//! a generated sequence means the same thing whenever it runs.

use proptest::prelude::*;
use proptest::strategy::{BoxedStrategy, Union};

/// A measured-time range relative to now: from `back` slots before now, `len` slots long.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Span {
    pub(crate) back: i64,
    pub(crate) len: i64,
}

/// The terms of a consent to the company, relative to now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Window {
    /// Step counts (the only type delivered) or sleep (covers nothing delivered).
    pub(crate) steps: bool,
    /// `None`: any measured time.
    pub(crate) span: Option<Span>,
    /// Minutes until it lapses; `None`: until withdrawn.
    pub(crate) valid_for_min: Option<i64>,
}

#[derive(Debug, Clone)]
pub(crate) enum Op {
    /// The clock moves on.
    Advance {
        secs: i64,
    },
    /// A bridge delivers, as one new batch, the records of `device` measured `back` slots
    /// before the latest slot measured by now (in this order; not yet measured ones are left
    /// out).
    Deliver {
        bridge: usize,
        device: usize,
        back: Vec<i64>,
    },
    /// An earlier batch again, byte for byte (same batch id): a lost ack, a replay.
    Replay {
        nth: usize,
    },
    /// Pairing: start, the bridge's report, confirmation with the code.
    Pair {
        person: usize,
        device: usize,
        bridge: usize,
    },
    Release {
        person: usize,
        device: usize,
    },
    GrantStorage {
        person: usize,
    },
    WithdrawStorage {
        person: usize,
    },
    /// A consent to the company.
    Grant {
        person: usize,
        window: Window,
    },
    /// Withdraws the `nth` (modulo) of the person's company consents in force.
    Withdraw {
        person: usize,
        nth: usize,
    },
    /// Replaces the `nth` consent in force by a new one, in either order.
    Replace {
        person: usize,
        nth: usize,
        window: Window,
        withdraw_first: bool,
    },
    /// Operator: `old`'s records of the range are `new`'s.
    Reattribute {
        device: usize,
        span: Span,
        old: usize,
        new: usize,
    },
    /// Operator: the person's records of the range are nobody's.
    Unlink {
        device: usize,
        span: Span,
        person: usize,
    },
    /// The person: my records of the range are not mine.
    UnlinkOwn {
        device: usize,
        span: Span,
        person: usize,
    },
    /// The person: the quarantined records of the range are mine.
    Confirm {
        device: usize,
        span: Span,
        person: usize,
    },
    Erase {
        person: usize,
    },
    /// The company reads at most `pages` pages of `limit` changes, resuming at its cursor.
    Sync {
        pages: usize,
        limit: usize,
    },
}

impl Op {
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Op::Advance { .. } => "advance",
            Op::Deliver { .. } => "deliver",
            Op::Replay { .. } => "replay",
            Op::Pair { .. } => "pair",
            Op::Release { .. } => "release",
            Op::GrantStorage { .. } => "grant_storage",
            Op::WithdrawStorage { .. } => "withdraw_storage",
            Op::Grant { .. } => "grant",
            Op::Withdraw { .. } => "withdraw",
            Op::Replace { .. } => "replace",
            Op::Reattribute { .. } => "reattribute",
            Op::Unlink { .. } => "unlink",
            Op::UnlinkOwn { .. } => "unlink_own",
            Op::Confirm { .. } => "confirm",
            Op::Erase { .. } => "erase",
            Op::Sync { .. } => "sync",
        }
    }
}

fn person() -> impl Strategy<Value = usize> {
    0..crate::PEOPLE.len()
}

fn device() -> impl Strategy<Value = usize> {
    0..crate::DEVICES.len()
}

fn span() -> impl Strategy<Value = Span> {
    (0i64..12, 1i64..12).prop_map(|(back, len)| Span { back, len })
}

fn window() -> impl Strategy<Value = Window> {
    (
        prop::bool::weighted(0.85),
        prop::option::weighted(0.5, span()),
        prop::option::weighted(0.4, prop::sample::select(vec![1i64, 3, 10, 30])),
    )
        .prop_map(|(steps, span, valid_for_min)| Window {
            steps,
            span,
            valid_for_min,
        })
}

/// One operation, weighted towards what makes interesting histories (deliveries, clock,
/// pairings), without the kinds named in `without` (see `PHR_MODEL_WITHOUT`; also
/// `other_bridges`).
pub(crate) fn op(without: &[String]) -> BoxedStrategy<Op> {
    // `other_bridges`: every pairing and delivery through the devices' first bridge.
    // Deliveries mostly through the devices' first bridge (where they stay unless paired
    // elsewhere), so that most histories store something; pairings move them now and then.
    let (deliver_via, pair_via) = if without.iter().any(|w| w == "other_bridges") {
        (vec![0usize], vec![0usize])
    } else {
        (vec![0usize, 0, 0, 0, 0, 1, 1, 2], vec![0usize, 0, 0, 1])
    };
    let bridge = prop::sample::select(deliver_via);
    let pair_bridge = prop::sample::select(pair_via);
    let all: Vec<(u32, &str, BoxedStrategy<Op>)> = vec![
        (
            6,
            "advance",
            prop::sample::select(vec![30i64, 30, 60, 120, 120, 300, 600])
                .prop_map(|secs| Op::Advance { secs })
                .boxed(),
        ),
        (
            10,
            "deliver",
            (
                bridge.clone(),
                device(),
                prop::collection::vec(0i64..10, 1..5),
            )
                .prop_map(|(bridge, device, mut back)| {
                    let mut seen = std::collections::BTreeSet::new();
                    back.retain(|b| seen.insert(*b));
                    Op::Deliver {
                        bridge,
                        device,
                        back,
                    }
                })
                .boxed(),
        ),
        (
            2,
            "replay",
            (0usize..64).prop_map(|nth| Op::Replay { nth }).boxed(),
        ),
        (
            5,
            "pair",
            (person(), device(), pair_bridge)
                .prop_map(|(person, device, bridge)| Op::Pair {
                    person,
                    device,
                    bridge,
                })
                .boxed(),
        ),
        (
            2,
            "release",
            (person(), device())
                .prop_map(|(person, device)| Op::Release { person, device })
                .boxed(),
        ),
        (
            1,
            "grant_storage",
            person()
                .prop_map(|person| Op::GrantStorage { person })
                .boxed(),
        ),
        (
            1,
            "withdraw_storage",
            person()
                .prop_map(|person| Op::WithdrawStorage { person })
                .boxed(),
        ),
        (
            3,
            "grant",
            (person(), window())
                .prop_map(|(person, window)| Op::Grant { person, window })
                .boxed(),
        ),
        (
            2,
            "withdraw",
            (person(), 0usize..4)
                .prop_map(|(person, nth)| Op::Withdraw { person, nth })
                .boxed(),
        ),
        (
            1,
            "replace",
            (person(), 0usize..4, window(), any::<bool>())
                .prop_map(|(person, nth, window, withdraw_first)| Op::Replace {
                    person,
                    nth,
                    window,
                    withdraw_first,
                })
                .boxed(),
        ),
        (
            1,
            "reattribute",
            (device(), span(), person(), person())
                .prop_filter("two people", |(_, _, a, b)| a != b)
                .prop_map(|(device, span, old, new)| Op::Reattribute {
                    device,
                    span,
                    old,
                    new,
                })
                .boxed(),
        ),
        (
            1,
            "unlink",
            (device(), span(), person())
                .prop_map(|(device, span, person)| Op::Unlink {
                    device,
                    span,
                    person,
                })
                .boxed(),
        ),
        (
            1,
            "unlink_own",
            (device(), span(), person())
                .prop_map(|(device, span, person)| Op::UnlinkOwn {
                    device,
                    span,
                    person,
                })
                .boxed(),
        ),
        (
            2,
            "confirm",
            (device(), span(), person())
                .prop_map(|(device, span, person)| Op::Confirm {
                    device,
                    span,
                    person,
                })
                .boxed(),
        ),
        (
            1,
            "erase",
            person().prop_map(|person| Op::Erase { person }).boxed(),
        ),
        (
            4,
            "sync",
            (1usize..4, 1usize..4)
                .prop_map(|(pages, limit)| Op::Sync { pages, limit })
                .boxed(),
        ),
    ];
    let chosen: Vec<(u32, BoxedStrategy<Op>)> = all
        .into_iter()
        .filter(|(_, name, _)| !without.iter().any(|w| w == name))
        .map(|(w, _, s)| (w, s))
        .collect();
    Union::new_weighted(chosen).boxed()
}
