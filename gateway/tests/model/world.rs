//! The reference model: a few maps and lists that say, after every operation, where each
//! record key must be, who may pair what, which bridge may deliver what, and what a company
//! may see. Pure: no store, no clock, no I/O. It implements the semantics issue #13 asks for
//! (standing corrections, held records, the erasure fence, a bridge's backlog), not today's
//! code, so a difference from the store is a finding, not a model bug, unless the model's
//! own consistency check (`Model::self_check`) fails.

use std::collections::{BTreeMap, BTreeSet};

use uuid::Uuid;

use phr_schema::{Reason, RecordType};

/// A record key of the universe: a device and a slot. Every record is a one-minute step
/// count, so the type is always `step-count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Key {
    pub(crate) device: usize,
    pub(crate) slot: usize,
}

/// Where a key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Loc {
    /// In `records`, under this person.
    Stored(String),
    /// In `quarantine`, attributed to nobody (no binding, straddles a change, unlinked).
    Quarantined,
    /// In `quarantine`, held for the person [`Model::attribute`] names until they consent
    /// to storage.
    Held,
}

/// Whom a record belongs to after the bindings and the standing corrections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Attr {
    Person(String),
    /// No binding covers it, or it straddles a change of binding.
    Unbound,
    Unlinked,
}

/// A binding `[from, to)`; `to = None` is open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Binding {
    pub(crate) person: String,
    pub(crate) from: i64,
    pub(crate) to: Option<i64>,
}

impl Binding {
    fn covers(&self, start: i64, end: i64) -> bool {
        self.from <= start && self.to.is_none_or(|t| end <= t)
    }

    pub(crate) fn open_at(&self, now: i64) -> bool {
        self.from <= now && self.to.is_none_or(|t| t > now)
    }
}

/// A bridge's holding of a device, `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Held {
    pub(crate) bridge: String,
    pub(crate) from: i64,
    pub(crate) to: Option<i64>,
}

/// A correction, kept as a standing rule (applied, in order, to records that arrive later).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rule {
    Reattribute {
        device: usize,
        from: i64,
        to: i64,
        old: String,
        new: String,
    },
    /// An operator's unlinking: every record of `person` in the range.
    Unlink {
        device: usize,
        from: i64,
        to: i64,
        person: String,
    },
    /// The person's own: only records inside their claim periods.
    UnlinkOwn {
        device: usize,
        from: i64,
        to: i64,
        person: String,
    },
    Confirm {
        device: usize,
        from: i64,
        to: i64,
        person: String,
    },
    /// A record stored for `person` stays theirs although what made it theirs is gone (a
    /// binding released at the instant it began, after they confirmed records with it).
    Pin { key: Key, person: String },
}

/// A person's consent to the company, as the model knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CompanyConsent {
    pub(crate) id: Uuid,
    pub(crate) person: String,
    pub(crate) types: Vec<RecordType>,
    pub(crate) from: Option<i64>,
    pub(crate) to: Option<i64>,
    pub(crate) until: Option<i64>,
    pub(crate) withdrawn: bool,
}

impl CompanyConsent {
    pub(crate) fn in_force(&self, now: i64) -> bool {
        !self.withdrawn && self.until.is_none_or(|u| u > now)
    }

    /// The data access layer's rule: the type, and the measured start inside `[from, to)`.
    pub(crate) fn covers(&self, record_type: RecordType, start: i64) -> bool {
        self.types.contains(&record_type)
            && self.from.is_none_or(|f| f <= start)
            && self.to.is_none_or(|t| start < t)
    }
}

/// A span of measured time in which a person's own corrections hold, `[from, to)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Period {
    pub(crate) from: i64,
    pub(crate) to: i64,
}

impl Period {
    fn contains(&self, start: i64, end: i64) -> bool {
        start >= self.from && end <= self.to
    }

    fn overlaps(&self, from: i64, to: i64) -> bool {
        self.from < to && from < self.to
    }
}

/// What a delivery of one record should come to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    Rejected(Reason),
    Duplicate,
    Stored(String),
    Quarantined,
    Held,
}

/// Whether the bridge may deliver the record: yes, no, or the record straddles the moment
/// the device moved away from the bridge (the design does not say; the store decides and
/// the model follows).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BridgeVerdict {
    Allowed,
    Refused,
    Either,
}

/// Pairings started (and recorded) at a moment, for the start limits.
#[derive(Debug, Clone)]
pub(crate) struct Start {
    pub(crate) at: i64,
    pub(crate) person: String,
    pub(crate) device: usize,
    pub(crate) bridge: String,
}

/// The model's whole state.
#[derive(Debug, Clone)]
pub(crate) struct Model {
    pub(crate) now: i64,
    pub(crate) bindings: Vec<Vec<Binding>>,
    pub(crate) bridges: Vec<Vec<Held>>,
    /// Whether each person has a storage consent in force.
    pub(crate) storage: BTreeMap<String, bool>,
    pub(crate) rules: Vec<Rule>,
    /// Erasure fences: records of the person measured (start) before it are never stored.
    pub(crate) fences: BTreeMap<String, i64>,
    pub(crate) locs: BTreeMap<Key, Loc>,
    pub(crate) consents: Vec<CompanyConsent>,
    pub(crate) starts: Vec<Start>,
    /// Model today's rejection of records without storage consent instead of holding them
    /// (`PHR_MODEL_SKIP=held`), to find the failures behind that one.
    pub(crate) reject_unconsented: bool,
}

/// Measured times of slot `slot`: `[T0 + slot * SLOT, + 1 min)`.
pub(crate) fn measured(slot: usize) -> (i64, i64) {
    let start = crate::T0 + slot as i64 * crate::SLOT_MS;
    (start, start + 60_000)
}

impl Model {
    pub(crate) fn new(people: &[&str], devices: usize, home_bridge: &str, now: i64) -> Self {
        Self {
            now,
            bindings: vec![Vec::new(); devices],
            bridges: vec![
                vec![Held {
                    bridge: home_bridge.to_owned(),
                    from: i64::MIN,
                    to: None,
                }];
                devices
            ],
            storage: people.iter().map(|p| (p.to_string(), true)).collect(),
            rules: Vec::new(),
            fences: BTreeMap::new(),
            locs: BTreeMap::new(),
            consents: Vec::new(),
            starts: Vec::new(),
            reject_unconsented: false,
        }
    }

    pub(crate) fn has_storage(&self, person: &str) -> bool {
        self.storage.get(person).copied().unwrap_or(false)
    }

    /// The person's claim periods of the device: their bindings, back-to-back ones merged;
    /// the device's first holder also holds the time before its first binding.
    pub(crate) fn claim_periods(&self, device: usize, person: &str) -> Vec<Period> {
        let mut out: Vec<Period> = Vec::new();
        for (i, b) in self.bindings[device].iter().enumerate() {
            if b.person != person {
                continue;
            }
            let from = if i == 0 { i64::MIN } else { b.from };
            let to = b.to.unwrap_or(i64::MAX);
            match out.last_mut() {
                Some(last) if last.to >= from => last.to = last.to.max(to),
                _ => out.push(Period { from, to }),
            }
        }
        out
    }

    fn in_claim_periods(&self, device: usize, person: &str, start: i64, end: i64) -> bool {
        self.claim_periods(device, person)
            .iter()
            .any(|p| p.contains(start, end))
    }

    /// Whose the key is by the bindings alone.
    pub(crate) fn by_binding(&self, key: Key) -> Attr {
        let (start, end) = measured(key.slot);
        let bindings = &self.bindings[key.device];
        match bindings.iter().find(|b| b.covers(start, end)) {
            Some(b) => Attr::Person(b.person.clone()),
            None => Attr::Unbound,
        }
    }

    /// Whose the key is: the binding at its measured time, then every standing correction
    /// of its device and range, in order.
    pub(crate) fn attribute(&self, key: Key) -> Attr {
        let (start, end) = measured(key.slot);
        let mut attr = self.by_binding(key);
        for rule in &self.rules {
            attr = match (rule, attr) {
                (
                    Rule::Reattribute {
                        device,
                        from,
                        to,
                        old,
                        new,
                    },
                    Attr::Person(p),
                ) if *device == key.device && (*from..*to).contains(&start) && p == *old => {
                    Attr::Person(new.clone())
                }
                (
                    Rule::Unlink {
                        device,
                        from,
                        to,
                        person,
                    },
                    Attr::Person(p),
                ) if *device == key.device && (*from..*to).contains(&start) && p == *person => {
                    Attr::Unlinked
                }
                (
                    Rule::UnlinkOwn {
                        device,
                        from,
                        to,
                        person,
                    },
                    Attr::Person(p),
                ) if *device == key.device
                    && (*from..*to).contains(&start)
                    && p == *person
                    && self.in_claim_periods(key.device, person, start, end) =>
                {
                    Attr::Unlinked
                }
                (
                    Rule::Confirm {
                        device,
                        from,
                        to,
                        person,
                    },
                    Attr::Unbound | Attr::Unlinked,
                ) if *device == key.device
                    && (*from..*to).contains(&start)
                    && self.in_claim_periods(key.device, person, start, end) =>
                {
                    Attr::Person(person.clone())
                }
                (
                    Rule::Pin {
                        key: pinned,
                        person,
                    },
                    _,
                ) if *pinned == key => Attr::Person(person.clone()),
                (_, attr) => attr,
            };
        }
        attr
    }

    fn fenced(&self, person: &str, start: i64) -> bool {
        self.fences.get(person).is_some_and(|f| start < *f)
    }

    pub(crate) fn bridge_verdict(&self, device: usize, bridge: &str, key: Key) -> BridgeVerdict {
        let (start, end) = measured(key.slot);
        match self.bridges[device]
            .iter()
            .rev()
            .find(|h| h.bridge == bridge)
        {
            None => BridgeVerdict::Refused,
            Some(Held { to: None, .. }) => BridgeVerdict::Allowed,
            Some(Held { to: Some(to), .. }) if end <= *to => BridgeVerdict::Allowed,
            Some(Held { to: Some(to), .. }) if start >= *to => BridgeVerdict::Refused,
            Some(_) => BridgeVerdict::Either,
        }
    }

    /// What delivering `key` should come to once the bridge may deliver it.
    pub(crate) fn decide(&self, key: Key) -> Outcome {
        let (start, end) = measured(key.slot);
        // Measured before an erasure, in the erased person's claim periods, attributed to
        // nobody: refused as erased before the key is looked up (a quarantined row that came
        // into their periods only by a later pairing stays, and a replay of it is refused).
        let fenced_claim = || {
            self.fences
                .iter()
                .any(|(p, f)| start < *f && self.in_claim_periods(key.device, p, start, end))
        };
        if let Some(loc) = self.locs.get(&key) {
            let nobodys = matches!(loc, Loc::Quarantined);
            if nobodys
                && matches!(self.attribute(key), Attr::Unbound | Attr::Unlinked)
                && fenced_claim()
            {
                return Outcome::Rejected(Reason::ErasedByPerson);
            }
            return Outcome::Duplicate;
        }
        match self.attribute(key) {
            Attr::Person(p) if self.fenced(&p, start) => Outcome::Rejected(Reason::ErasedByPerson),
            Attr::Person(p) if self.has_storage(&p) => Outcome::Stored(p),
            // Exploration only (`PHR_MODEL_SKIP=held`): today's rejection, to look past it.
            Attr::Person(_) if self.reject_unconsented => {
                Outcome::Rejected(Reason::NoStorageConsent)
            }
            Attr::Person(_) => Outcome::Held,
            // Quarantine of an erased person's claim periods went with their erasure: a late
            // record measured there before it does not come back.
            Attr::Unbound | Attr::Unlinked if fenced_claim() => {
                Outcome::Rejected(Reason::ErasedByPerson)
            }
            Attr::Unbound | Attr::Unlinked => Outcome::Quarantined,
        }
    }

    pub(crate) fn apply(&mut self, key: Key, outcome: &Outcome) {
        let loc = match outcome {
            Outcome::Stored(p) => Loc::Stored(p.clone()),
            Outcome::Quarantined => Loc::Quarantined,
            Outcome::Held => Loc::Held,
            Outcome::Rejected(_) | Outcome::Duplicate => return,
        };
        self.locs.insert(key, loc);
    }

    /// Held keys whose person has consent now become stored.
    pub(crate) fn release_held(&mut self) {
        let release: Vec<(Key, String)> = self
            .locs
            .iter()
            .filter(|(_, l)| **l == Loc::Held)
            .filter_map(|(k, _)| match self.attribute(*k) {
                Attr::Person(p) if self.has_storage(&p) && !self.fenced(&p, measured(k.slot).0) => {
                    Some((*k, p))
                }
                _ => None,
            })
            .collect();
        for (k, p) in release {
            self.locs.insert(k, Loc::Stored(p));
        }
    }

    /// The open binding of the device at `now`.
    pub(crate) fn open_binding(&self, device: usize) -> Option<&Binding> {
        self.bindings[device].iter().find(|b| b.open_at(self.now))
    }

    /// Binds from now, closing the open binding (a pairing's confirmation).
    pub(crate) fn bind(&mut self, device: usize, person: &str, bridge: &str) {
        let now = self.now;
        for b in self.bindings[device].iter_mut().filter(|b| b.to.is_none()) {
            b.to = Some(now);
        }
        self.bindings[device].push(Binding {
            person: person.to_owned(),
            from: now,
            to: None,
        });
        let holds = &mut self.bridges[device];
        if holds.last().is_none_or(|h| h.bridge != bridge) {
            if let Some(last) = holds.last_mut() {
                last.to = Some(now);
            }
            holds.push(Held {
                bridge: bridge.to_owned(),
                from: now,
                to: None,
            });
        }
    }

    /// Stored keys of `person` on `device` whose start is in `[from, to)`.
    pub(crate) fn stored_in(&self, device: usize, person: &str, from: i64, to: i64) -> Vec<Key> {
        self.locs
            .iter()
            .filter(|(k, l)| {
                k.device == device
                    && (from..to).contains(&measured(k.slot).0)
                    && **l == Loc::Stored(person.to_owned())
            })
            .map(|(k, _)| *k)
            .collect()
    }

    pub(crate) fn unlink(&mut self, keys: &[Key]) {
        for k in keys {
            self.locs.insert(*k, Loc::Quarantined);
        }
    }

    /// Quarantined (not held) keys of the device, start in the range, inside the person's
    /// claim periods: what a confirmation takes.
    pub(crate) fn confirmable(&self, device: usize, person: &str, from: i64, to: i64) -> Vec<Key> {
        self.locs
            .iter()
            .filter(|(k, l)| {
                let (s, e) = measured(k.slot);
                k.device == device
                    && **l == Loc::Quarantined
                    && (from..to).contains(&s)
                    && self.in_claim_periods(device, person, s, e)
            })
            .map(|(k, _)| *k)
            .collect()
    }

    /// Why a person's own correction of the range is refused, if it is.
    pub(crate) fn confine(
        &self,
        device: usize,
        person: &str,
        from: i64,
        to: i64,
    ) -> Option<phr_gateway::store::corrections::Refusal> {
        use phr_gateway::store::corrections::Refusal;
        let periods = self.claim_periods(device, person);
        if periods.is_empty() {
            Some(Refusal::NotYourDevice)
        } else if !periods.iter().any(|p| p.overlaps(from, to)) {
            Some(Refusal::OutsideYourBindings)
        } else {
            None
        }
    }

    /// The person's own unlinking takes their records inside their claim periods.
    /// Keys held for `person`'s consent, of the device, start in the range (and, if
    /// `own`, inside their claim periods): what a correction of theirs treats as theirs.
    pub(crate) fn held_for(
        &self,
        device: usize,
        person: &str,
        from: i64,
        to: i64,
        own: bool,
    ) -> Vec<Key> {
        self.locs
            .iter()
            .filter(|(k, l)| {
                let (s, e) = measured(k.slot);
                **l == Loc::Held
                    && k.device == device
                    && (from..to).contains(&s)
                    && self.attribute(**k) == Attr::Person(person.to_owned())
                    && (!own || self.in_claim_periods(device, person, s, e))
            })
            .map(|(k, _)| *k)
            .collect()
    }

    pub(crate) fn own_unlinkable(
        &self,
        device: usize,
        person: &str,
        from: i64,
        to: i64,
    ) -> Vec<Key> {
        self.stored_in(device, person, from, to)
            .into_iter()
            .filter(|k| {
                let (s, e) = measured(k.slot);
                self.in_claim_periods(device, person, s, e)
            })
            .collect()
    }

    /// Erases the person: their records and held records, the quarantine of their claim
    /// periods, their bindings (closed now; one that started now is void), their consents;
    /// and the fence. Returns the keys that were stored under them.
    pub(crate) fn erase(&mut self, person: &str) -> BTreeSet<Key> {
        let now = self.now;
        let mut gone = BTreeSet::new();
        let mut stored = BTreeSet::new();
        for (k, l) in &self.locs {
            let (s, e) = measured(k.slot);
            match l {
                Loc::Stored(p) if p == person => {
                    stored.insert(*k);
                    gone.insert(*k);
                }
                Loc::Stored(_) => {}
                Loc::Held if self.attribute(*k) == Attr::Person(person.to_owned()) => {
                    gone.insert(*k);
                }
                // Held for someone else's consent (a correction made it theirs): their data,
                // which nobody else's erasure removes, even measured in this person's periods.
                Loc::Held => {}
                Loc::Quarantined => {
                    if self.in_claim_periods(k.device, person, s, e) {
                        gone.insert(*k);
                    }
                }
            }
        }
        for k in &gone {
            self.locs.remove(k);
        }
        for bindings in &mut self.bindings {
            bindings.retain(|b| !(b.person == person && b.from >= now));
            for b in bindings.iter_mut().filter(|b| b.person == person) {
                if b.to.is_none_or(|t| t > now) {
                    b.to = Some(now);
                }
            }
        }
        self.storage.insert(person.to_owned(), false);
        for c in self.consents.iter_mut().filter(|c| c.person == person) {
            if c.in_force(now) {
                c.withdrawn = true;
            }
        }
        self.fences.insert(person.to_owned(), now);
        stored
    }

    /// The company's consents of `person` in force now.
    pub(crate) fn consents_in_force<'a>(
        &'a self,
        person: &'a str,
    ) -> impl Iterator<Item = &'a CompanyConsent> + 'a {
        self.consents
            .iter()
            .filter(move |c| c.person == person && c.in_force(self.now))
    }

    /// Whether a consent of `person` to the company in force now covers the record.
    pub(crate) fn company_may_see(&self, person: &str, key: Key) -> bool {
        let start = measured(key.slot).0;
        self.consents_in_force(person)
            .any(|c| c.covers(RecordType::StepCount, start))
    }

    /// Whether the pairing start limits refuse a start now.
    pub(crate) fn too_many_starts(&self, person: &str, device: usize, bridge: &str) -> bool {
        // As specified (README, "pair a device"), not the store's constants: at most 5
        // pairings per account and per device and 20 per bridge in 15 minutes.
        const PER_PERSON: i64 = 5;
        const PER_DEVICE: i64 = 5;
        const PER_BRIDGE: i64 = 20;
        const WINDOW_MS: i64 = 15 * 60_000;
        let since = self.now - WINDOW_MS;
        let recent = self.starts.iter().filter(|s| s.at > since);
        let (mut p, mut d, mut b) = (0, 0, 0);
        for s in recent {
            p += i64::from(s.person == person);
            d += i64::from(s.device == device);
            b += i64::from(s.bridge == bridge);
        }
        p >= PER_PERSON || d >= PER_DEVICE || b >= PER_BRIDGE
    }

    /// The model agrees with itself: every stored key is where the bindings and corrections
    /// say; every held key belongs to someone without storage consent (or who is fenced).
    pub(crate) fn self_check(&self) -> Result<(), String> {
        for (k, l) in &self.locs {
            let attr = self.attribute(*k);
            match l {
                Loc::Stored(p) if attr != Attr::Person(p.clone()) => {
                    return Err(format!(
                        "model: {k:?} stored under {p} but attributed {attr:?}"
                    ))
                }
                Loc::Held => {
                    if let Attr::Person(p) = &attr {
                        if self.has_storage(p) && !self.fenced(p, measured(k.slot).0) {
                            return Err(format!("model: {k:?} held though {p} consents"));
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }
}
