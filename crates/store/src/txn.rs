//! KV transactions: every operation in order, all or nothing.

use crate::command::{KvSetMode, TxnError, TxnOp, TxnOutcome, TxnResult};
use crate::state::{ApplyCtx, StateMachine};
use crate::types::KvEntry;

impl StateMachine {
    /// Applies `ops` in order; on the first failure, restores every touched key and reports
    /// the failures (Consul reports each failed operation; we stop at the first, as later ones
    /// would run against a state that will be rolled back).
    pub(crate) fn apply_txn(&mut self, ctx: &mut ApplyCtx, ops: &[TxnOp]) -> TxnOutcome {
        let mut undo: Vec<(crate::Key, Option<KvEntry>)> = Vec::new();
        let changes_before = ctx.changes.len();
        let mut results = Vec::new();
        for (op_index, op) in ops.iter().enumerate() {
            match self.apply_txn_op(ctx, op, &mut undo) {
                Ok(mut produced) => results.append(&mut produced),
                Err(what) => {
                    for (key, previous) in undo.into_iter().rev() {
                        match previous {
                            Some(entry) => self.kv.insert(key, entry),
                            None => self.kv.remove(&key),
                        };
                    }
                    ctx.changes.truncate(changes_before);
                    return TxnOutcome::RolledBack(vec![TxnError { op_index, what }]);
                }
            }
        }
        TxnOutcome::Committed(results)
    }

    fn apply_txn_op(
        &mut self,
        ctx: &mut ApplyCtx,
        op: &TxnOp,
        undo: &mut Vec<(crate::Key, Option<KvEntry>)>,
    ) -> Result<Vec<TxnResult>, String> {
        let written = |entry: KvEntry| {
            vec![TxnResult::Kv(KvEntry {
                value: bytes::Bytes::new(),
                ..entry
            })]
        };
        match op {
            TxnOp::Set { key, value, flags } => {
                undo.push((key.into(), self.kv.get(key.as_bytes()).cloned()));
                Ok(written(self.kv_write(
                    ctx,
                    key.as_bytes(),
                    value,
                    *flags,
                    &KvSetMode::Set,
                )))
            }
            TxnOp::Cas {
                key,
                value,
                flags,
                index,
            } => {
                let current = self.kv.get(key.as_bytes()).map(|e| e.modify_index);
                let matches = match (index, current) {
                    (0, None) => true,
                    (wanted, Some(actual)) => *wanted == actual,
                    _ => false,
                };
                if !matches {
                    return Err(format!(
                        "failed to set key {key:?}, index is stale (wanted {index}, have {})",
                        current.unwrap_or(0)
                    ));
                }
                undo.push((key.into(), self.kv.get(key.as_bytes()).cloned()));
                Ok(written(self.kv_write(
                    ctx,
                    key.as_bytes(),
                    value,
                    *flags,
                    &KvSetMode::Cas(*index),
                )))
            }
            TxnOp::Lock {
                key,
                value,
                flags,
                session,
            } => {
                if self.session(session).is_none() {
                    return Err(format!("invalid session {session:?}"));
                }
                if self
                    .lock_delay_until(key.as_bytes())
                    .is_some_and(|until| until > ctx.time_ms)
                {
                    return Err(format!("key {key:?} is in its lock-delay window"));
                }
                let holder = self.kv.get(key.as_bytes()).and_then(|e| e.session.clone());
                if holder.as_ref().is_some_and(|h| h != session) {
                    return Err(format!(
                        "failed to lock key {key:?}, already held by another session"
                    ));
                }
                undo.push((key.into(), self.kv.get(key.as_bytes()).cloned()));
                let mode = KvSetMode::Acquire(session.clone());
                Ok(written(self.kv_write(
                    ctx,
                    key.as_bytes(),
                    value,
                    *flags,
                    &mode,
                )))
            }
            TxnOp::Unlock {
                key,
                value,
                flags,
                session,
            } => {
                let holder = self.kv.get(key.as_bytes()).and_then(|e| e.session.clone());
                if holder.as_ref() != Some(session) {
                    return Err(format!(
                        "failed to unlock key {key:?}, lock not held by session"
                    ));
                }
                undo.push((key.into(), self.kv.get(key.as_bytes()).cloned()));
                let mode = KvSetMode::Release(session.clone());
                Ok(written(self.kv_write(
                    ctx,
                    key.as_bytes(),
                    value,
                    *flags,
                    &mode,
                )))
            }
            TxnOp::Get { key } => match self.kv.get(key.as_bytes()) {
                Some(entry) => Ok(vec![TxnResult::Kv(entry.clone())]),
                None => Err(format!("key {key:?} doesn't exist")),
            },
            TxnOp::GetTree { key } => Ok(self
                .kv_keys_with_prefix(key.as_bytes())
                .cloned()
                .map(TxnResult::Kv)
                .collect()),
            TxnOp::CheckIndex { key, index } => match self.kv.get(key.as_bytes()) {
                Some(entry) if entry.modify_index == *index => Ok(written(entry.clone())),
                Some(entry) => Err(format!(
                    "current modify index {} != {index} for key {key:?}",
                    entry.modify_index
                )),
                None => Err(format!("key {key:?} doesn't exist")),
            },
            TxnOp::CheckSession { key, session } => match self.kv.get(key.as_bytes()) {
                Some(entry) if entry.session.as_ref() == Some(session) => {
                    Ok(written(entry.clone()))
                }
                Some(_) => Err(format!("key {key:?} is not locked by session {session:?}")),
                None => Err(format!("key {key:?} doesn't exist")),
            },
            TxnOp::CheckNotExists { key } => match self.kv.get(key.as_bytes()) {
                Some(_) => Err(format!("key {key:?} exists")),
                None => Ok(Vec::new()),
            },
            TxnOp::Delete { key } => {
                undo.push((key.into(), self.kv.get(key.as_bytes()).cloned()));
                self.kv_remove(ctx, key.as_bytes());
                Ok(Vec::new())
            }
            TxnOp::DeleteTree { key } => {
                for entry in self.kv_keys_with_prefix(key.as_bytes()) {
                    undo.push((entry.key.clone(), Some(entry.clone())));
                }
                self.kv_delete_tree(ctx, key.as_bytes());
                Ok(Vec::new())
            }
            TxnOp::DeleteCas { key, index } => match self.kv.get(key.as_bytes()) {
                Some(entry) if entry.modify_index == *index => {
                    undo.push((key.into(), Some(entry.clone())));
                    self.kv_remove(ctx, key.as_bytes());
                    Ok(Vec::new())
                }
                _ => Err(format!("failed to delete key {key:?}, index is stale")),
            },
        }
    }
}
