//! The engine's in-memory job table, dense enough for 100,000 jobs in a few MiB.
//!
//! Entries live in fixed-size chunks (no large reallocation while jobs are added, so bulk
//! creation does not leave freed copies behind) and are addressed by a `u32` index; the timer
//! holds `(due, index, generation)` instead of ids. Ids are kept compactly: the engine's own
//! ids are UUIDs (16 bytes inline), any other id (a store written by other means) as text. The
//! id → index lookup is a hash table of bare `u32`s that compares against the ids in the entries.

use std::hash::{BuildHasher, Hash, RandomState};

use chrono::{DateTime, Utc};
use hashbrown::HashTable;

use crate::model::{JobStatus, MisfirePolicy, OverlapPolicy};
use crate::schedule::CompiledSchedule;

/// A job id: a canonical (lowercase, hyphenated) UUID in 16 bytes, or any other text as is.
#[derive(Clone, PartialEq, Eq)]
pub(super) enum JobId {
    Uuid([u8; 16]),
    Text(Box<str>),
}

/// A borrowed [`JobId`], for lookups by `&str` without allocating.
#[derive(PartialEq, Eq, Hash)]
enum IdRef<'a> {
    Uuid([u8; 16]),
    Text(&'a str),
}

impl<'a> IdRef<'a> {
    fn of(s: &'a str) -> IdRef<'a> {
        if s.len() == 36 {
            if let Ok(u) = uuid::Uuid::try_parse(s) {
                let mut buf = [0u8; 36];
                // Only the canonical form maps to bytes: the id must read back identically.
                if u.hyphenated().encode_lower(&mut buf).as_bytes() == s.as_bytes() {
                    return IdRef::Uuid(*u.as_bytes());
                }
            }
        }
        IdRef::Text(s)
    }
}

impl JobId {
    pub(super) fn new(s: &str) -> JobId {
        match IdRef::of(s) {
            IdRef::Uuid(b) => JobId::Uuid(b),
            IdRef::Text(t) => JobId::Text(t.into()),
        }
    }

    fn as_ref(&self) -> IdRef<'_> {
        match self {
            JobId::Uuid(b) => IdRef::Uuid(*b),
            JobId::Text(t) => IdRef::Text(t),
        }
    }
}

impl std::fmt::Display for JobId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JobId::Uuid(b) => {
                let mut buf = [0u8; 36];
                f.write_str(
                    uuid::Uuid::from_bytes(*b)
                        .hyphenated()
                        .encode_lower(&mut buf),
                )
            }
            JobId::Text(t) => f.write_str(t),
        }
    }
}

/// A job as the engine holds it in memory: only what scheduling and dispatch decide on. The full
/// definition is read when a run starts.
pub(super) struct JobEntry {
    pub id: JobId,
    pub schedule: CompiledSchedule,
    /// The latest slot decided (fired, pre-recorded or skipped).
    pub last_slot: Option<DateTime<Utc>>,
    /// Bumped (engine-wide counter) on every change; timer entries of other generations are
    /// ignored.
    pub generation: u32,
    /// Bumped when runs recorded ahead of their slot must be withdrawn (paused, disabled,
    /// schedule changed); see `timer.rs`.
    pub epoch: u32,
    pub running: u32,
    pub queued: u32,
    pub max_parallel: u32,
    pub misfire: Option<MisfirePolicy>,
    pub status: JobStatus,
    pub priority: u8,
    pub overlap: OverlapPolicy,
}

const CHUNK: usize = 1024;

/// Jobs by index, with an id → index table.
pub(super) struct Jobs {
    chunks: Vec<Box<[Option<JobEntry>]>>,
    free: Vec<u32>,
    index: HashTable<u32>,
    hasher: RandomState,
    len: usize,
}

impl Default for Jobs {
    fn default() -> Self {
        Jobs {
            chunks: Vec::new(),
            free: Vec::new(),
            index: HashTable::new(),
            hasher: RandomState::new(),
            len: 0,
        }
    }
}

impl Jobs {
    fn hash(hasher: &RandomState, id: IdRef<'_>) -> u64 {
        hasher.hash_one(id)
    }

    fn slot(&self, idx: u32) -> Option<&Option<JobEntry>> {
        let i = idx as usize;
        self.chunks.get(i / CHUNK).map(|c| &c[i % CHUNK])
    }

    fn slot_mut(&mut self, idx: u32) -> Option<&mut Option<JobEntry>> {
        let i = idx as usize;
        self.chunks.get_mut(i / CHUNK).map(|c| &mut c[i % CHUNK])
    }

    /// The index of the job with this id.
    pub fn find(&self, id: &str) -> Option<u32> {
        let key = IdRef::of(id);
        let hash = Self::hash(&self.hasher, IdRef::of(id));
        self.index
            .find(hash, |&i| self.at(i).is_some_and(|e| e.id.as_ref() == key))
            .copied()
    }

    pub fn at(&self, idx: u32) -> Option<&JobEntry> {
        self.slot(idx).and_then(Option::as_ref)
    }

    pub fn at_mut(&mut self, idx: u32) -> Option<&mut JobEntry> {
        self.slot_mut(idx).and_then(Option::as_mut)
    }

    pub fn get(&self, id: &str) -> Option<&JobEntry> {
        self.find(id).and_then(|i| self.at(i))
    }

    pub fn get_mut(&mut self, id: &str) -> Option<&mut JobEntry> {
        self.find(id).and_then(|i| self.at_mut(i))
    }

    /// Puts `entry` in place of the job with the same id, or adds it. Returns its index.
    pub fn upsert(&mut self, entry: JobEntry) -> u32 {
        if let Some(i) = self.find(&entry.id.to_string()) {
            *self.slot_mut(i).expect("indexed") = Some(entry);
            return i;
        }
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = (self.chunks.len() * CHUNK) as u32;
                self.chunks
                    .push(std::iter::repeat_with(|| None).take(CHUNK).collect());
                self.free.extend((i + 1..i + CHUNK as u32).rev());
                i
            }
        };
        let hash = Self::hash(&self.hasher, entry.id.as_ref());
        *self.slot_mut(idx).expect("allocated") = Some(entry);
        let (chunks, hasher) = (&self.chunks, &self.hasher);
        self.index.insert_unique(hash, idx, |&i| {
            let i = i as usize;
            let e = chunks[i / CHUNK][i % CHUNK].as_ref().expect("indexed");
            Self::hash(hasher, e.id.as_ref())
        });
        self.len += 1;
        idx
    }

    pub fn remove(&mut self, id: &str) -> Option<JobEntry> {
        let key = IdRef::of(id);
        let hash = Self::hash(&self.hasher, IdRef::of(id));
        let chunks = &self.chunks;
        let found = self.index.find_entry(hash, |&i| {
            let i = i as usize;
            chunks[i / CHUNK][i % CHUNK]
                .as_ref()
                .is_some_and(|e| e.id.as_ref() == key)
        });
        let idx = found.ok()?.remove().0;
        self.free.push(idx);
        self.len -= 1;
        self.slot_mut(idx).and_then(Option::take)
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn values(&self) -> impl Iterator<Item = &JobEntry> {
        self.chunks.iter().flat_map(|c| c.iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str) -> JobEntry {
        JobEntry {
            id: JobId::new(id),
            schedule: CompiledSchedule::compile(
                &crate::model::Schedule::Manual,
                chrono_tz::UTC,
                Utc::now(),
                &crate::schedule::CronCache::new(),
            )
            .unwrap(),
            last_slot: None,
            generation: 0,
            epoch: 0,
            running: 0,
            queued: 0,
            max_parallel: 1,
            misfire: None,
            status: JobStatus::Active,
            priority: 5,
            overlap: OverlapPolicy::Queue,
        }
    }

    #[test]
    fn ids_read_back_exactly() {
        let u = uuid::Uuid::now_v7().to_string();
        assert!(matches!(JobId::new(&u), JobId::Uuid(_)));
        assert_eq!(JobId::new(&u).to_string(), u);
        // Not canonical: kept as text, so the id reads back as given.
        for other in [
            u.to_uppercase(),
            u.replace('-', ""),
            "daily-report".to_owned(),
            String::new(),
        ] {
            assert!(matches!(JobId::new(&other), JobId::Text(_)), "{other}");
            assert_eq!(JobId::new(&other).to_string(), other);
        }
    }

    #[test]
    fn insert_find_replace_remove_reuse() {
        let mut jobs = Jobs::default();
        let ids: Vec<String> = (0..3000)
            .map(|i| {
                if i % 2 == 0 {
                    uuid::Uuid::now_v7().to_string()
                } else {
                    format!("job-{i}")
                }
            })
            .collect();
        let idx: Vec<u32> = ids.iter().map(|id| jobs.upsert(entry(id))).collect();
        assert_eq!(jobs.len(), 3000);
        for (id, i) in ids.iter().zip(&idx) {
            assert_eq!(jobs.find(id), Some(*i));
            assert_eq!(jobs.at(*i).unwrap().id.to_string(), *id);
        }
        assert_eq!(jobs.find(&ids[0].to_uppercase()), None);
        let mut e = entry(&ids[7]);
        e.priority = 9;
        assert_eq!(jobs.upsert(e), idx[7]);
        assert_eq!(jobs.get(&ids[7]).unwrap().priority, 9);
        assert_eq!(jobs.len(), 3000);
        assert!(jobs.remove(&ids[7]).is_some());
        assert!(jobs.remove(&ids[7]).is_none());
        assert!(jobs.get(&ids[7]).is_none());
        assert!(jobs.at(idx[7]).is_none());
        assert_eq!(jobs.len(), 2999);
        assert_eq!(jobs.values().count(), 2999);
        // The freed index is reused; the other jobs are untouched.
        assert_eq!(jobs.upsert(entry("new")), idx[7]);
        assert_eq!(jobs.find(&ids[8]), Some(idx[8]));
    }
}
