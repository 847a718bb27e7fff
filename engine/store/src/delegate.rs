//! [`delegate_event_store!`](crate::delegate_event_store): the
//! [`EventStore`](crate::EventStore) methods of a store that wraps another, written once.

/// What the macro's expansions name outside this crate.
pub use jiff::Timestamp;

/// Implements groups of [`EventStore`](crate::EventStore) methods by calling the same
/// method of the wrapped store in field `$field`, inside an `impl EventStore for …`
/// block: for a store that wraps another and changes a few methods (it writes those
/// itself). The groups: `reads` (streams, positions, ids, checkpoints), `projections`
/// (the index, instances, timers, work items, snapshots), `dead_letters`. `append`,
/// `concurrent_appends` and `steady_appends` are always written by the wrapper (the
/// last two have defaults a wrapper must not fall back to).
///
/// ```ignore
/// impl<S: EventStore> EventStore for Wrapper<S> {
///     async fn append(&self, commit: Commit) -> Result<Appended, StoreError> {
///         self.inner.append(commit).await // what the wrapper adds, around it
///     }
///     fn concurrent_appends(&self) -> usize { self.inner.concurrent_appends() }
///     fn steady_appends(&self) -> usize { self.inner.steady_appends() }
///     parcours_store::delegate_event_store!(inner: reads, projections, dead_letters);
/// }
/// ```
#[macro_export]
macro_rules! delegate_event_store {
    ($field:ident : $($group:ident),+ $(,)?) => {
        $( $crate::delegate_event_store!(@$group $field); )+
    };
    (@reads $field:ident) => {
        async fn read_stream(
            &self,
            stream: &str,
            after_version: u64,
        ) -> Result<Vec<$crate::StoredRecord>, $crate::StoreError> {
            self.$field.read_stream(stream, after_version).await
        }

        async fn read_streams_by_prefix(
            &self,
            prefix: &str,
        ) -> Result<Vec<$crate::StoredRecord>, $crate::StoreError> {
            self.$field.read_streams_by_prefix(prefix).await
        }

        async fn read_all(
            &self,
            after: u64,
            limit: usize,
        ) -> Result<Vec<$crate::StoredRecord>, $crate::StoreError> {
            self.$field.read_all(after, limit).await
        }

        async fn read_heads(
            &self,
            after: u64,
            limit: usize,
        ) -> Result<Vec<$crate::RecordHead>, $crate::StoreError> {
            self.$field.read_heads(after, limit).await
        }

        async fn read_at(
            &self,
            positions: &[u64],
        ) -> Result<Vec<$crate::StoredRecord>, $crate::StoreError> {
            self.$field.read_at(positions).await
        }

        async fn last_position(&self) -> Result<u64, $crate::StoreError> {
            self.$field.last_position().await
        }

        async fn scan_all<A, F>(
            &self,
            after: u64,
            limit: usize,
            acc: A,
            visit: F,
        ) -> Result<(A, Option<u64>), $crate::StoreError>
        where
            A: Send + 'static,
            F: FnMut(&mut A, $crate::RecordView<'_>) + Send + 'static,
        {
            self.$field.scan_all(after, limit, acc, visit).await
        }

        async fn contains(&self, id: &str) -> Result<bool, $crate::StoreError> {
            self.$field.contains(id).await
        }

        async fn stored_ids(
            &self,
            ids: &[String],
        ) -> Result<Vec<String>, $crate::StoreError> {
            self.$field.stored_ids(ids).await
        }

        async fn stored_events(
            &self,
            ids: &[String],
        ) -> Result<Vec<$crate::StoredId>, $crate::StoreError> {
            self.$field.stored_events(ids).await
        }

        async fn stream_version(&self, stream: &str) -> Result<u64, $crate::StoreError> {
            self.$field.stream_version(stream).await
        }

        async fn stream_versions(
            &self,
            streams: &[String],
        ) -> Result<Vec<u64>, $crate::StoreError> {
            self.$field.stream_versions(streams).await
        }

        async fn latest_subjects(
            &self,
            streams: &[String],
        ) -> Result<Vec<Option<String>>, $crate::StoreError> {
            self.$field.latest_subjects(streams).await
        }

        async fn checkpoint(&self, name: &str) -> Result<Option<u64>, $crate::StoreError> {
            self.$field.checkpoint(name).await
        }

        async fn save_checkpoint(
            &self,
            name: &str,
            position: u64,
        ) -> Result<(), $crate::StoreError> {
            self.$field.save_checkpoint(name, position).await
        }
    };
    (@projections $field:ident) => {
        async fn write_index(
            &self,
            changes: $crate::IndexChanges,
        ) -> Result<(), $crate::StoreError> {
            self.$field.write_index(changes).await
        }

        async fn clear_index(&self) -> Result<(), $crate::StoreError> {
            self.$field.clear_index().await
        }

        async fn instance(
            &self,
            stream: &str,
        ) -> Result<Option<$crate::InstanceRow>, $crate::StoreError> {
            self.$field.instance(stream).await
        }

        async fn instances_of(
            &self,
            tenant: &str,
            subject: &str,
        ) -> Result<Vec<$crate::InstanceRow>, $crate::StoreError> {
            self.$field.instances_of(tenant, subject).await
        }

        async fn instances_of_many(
            &self,
            patients: &[(&str, &str)],
        ) -> Result<Vec<Vec<$crate::InstanceRow>>, $crate::StoreError> {
            self.$field.instances_of_many(patients).await
        }

        async fn list_instances(
            &self,
            filter: &$crate::InstanceFilter,
        ) -> Result<Vec<$crate::InstanceRow>, $crate::StoreError> {
            self.$field.list_instances(filter).await
        }

        async fn due_timers(
            &self,
            until: $crate::delegate::Timestamp,
            limit: usize,
            scope: &$crate::TimerScope,
        ) -> Result<Vec<$crate::TimerRow>, $crate::StoreError> {
            self.$field.due_timers(until, limit, scope).await
        }

        async fn next_timer(
            &self,
            scope: &$crate::TimerScope,
        ) -> Result<Option<$crate::delegate::Timestamp>, $crate::StoreError> {
            self.$field.next_timer(scope).await
        }

        async fn count_timers(&self) -> Result<u64, $crate::StoreError> {
            self.$field.count_timers().await
        }

        async fn work_items(
            &self,
            filter: &$crate::WorkFilter,
        ) -> Result<Vec<$crate::WorkItem>, $crate::StoreError> {
            self.$field.work_items(filter).await
        }

        async fn work_item(
            &self,
            id: &str,
        ) -> Result<Option<$crate::WorkItem>, $crate::StoreError> {
            self.$field.work_item(id).await
        }

        async fn snapshot(
            &self,
            stream: &str,
        ) -> Result<Option<$crate::Snapshot>, $crate::StoreError> {
            self.$field.snapshot(stream).await
        }
    };
    (@dead_letters $field:ident) => {
        async fn dead_letter(
            &self,
            letter: $crate::DeadLetter,
        ) -> Result<u64, $crate::StoreError> {
            self.$field.dead_letter(letter).await
        }

        async fn dead_letters(
            &self,
            after: u64,
            limit: usize,
        ) -> Result<Vec<$crate::StoredDeadLetter>, $crate::StoreError> {
            self.$field.dead_letters(after, limit).await
        }

        async fn list_dead_letters(
            &self,
            filter: &$crate::DeadLetterFilter,
        ) -> Result<Vec<$crate::StoredDeadLetter>, $crate::StoreError> {
            self.$field.list_dead_letters(filter).await
        }

        async fn dead_letter_by_id(
            &self,
            id: u64,
        ) -> Result<Option<$crate::StoredDeadLetter>, $crate::StoreError> {
            self.$field.dead_letter_by_id(id).await
        }
    };
}
