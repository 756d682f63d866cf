// The SQL of the measured series and of model monitoring (issue #9), shared by the PostgreSQL and
// SQLite stores like `sql_store.rs` (included beside it, so it sees `Db`, `This`, `BEGIN` and the
// row helpers). Kept in its own file so the Store impl only gains one-line delegations.

impl This {
    async fn put_series_sql(
        &self,
        series: &str,
        start: Timestamp,
        slot_seconds: u32,
        values: &[f64],
    ) -> StoreResult<u64> {
        check_text("series", series, 64)?;
        if slot_seconds == 0 {
            return Err(StoreError::invalid("slot_seconds", "must be positive"));
        }
        let slot = i32::try_from(slot_seconds)
            .map_err(|_| StoreError::invalid("slot_seconds", "too long"))?;
        let step_ms = i64::from(slot_seconds) * 1000;
        let rows: Vec<(i64, f64)> = values
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite())
            .map(|(i, v)| (ms(start) + i as i64 * step_ms, *v))
            .collect();
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let mut written = 0;
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut q = QueryBuilder::<Db>::new(
                "INSERT INTO series_points (series, start_ms, slot_seconds, value) ",
            );
            q.push_values(chunk, |mut b, (at, v)| {
                b.push_bind(series.to_owned())
                    .push_bind(*at)
                    .push_bind(slot)
                    .push_bind(*v);
            });
            q.push(
                " ON CONFLICT (series, start_ms) DO UPDATE SET slot_seconds = excluded.slot_seconds, \
                 value = excluded.value",
            );
            written += q.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    async fn series_points_sql(
        &self,
        series: &str,
        from: Timestamp,
        to: Timestamp,
    ) -> StoreResult<Vec<SeriesPoint>> {
        let rows = sql!(
            "SELECT start_ms, slot_seconds, value FROM series_points WHERE series = $1 \
             AND start_ms >= $2 AND start_ms < $3 ORDER BY start_ms",
            series,
            ms(from),
            ms(to)
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SeriesPoint {
                    start: ts(row, "start_ms")?,
                    slot_seconds: u32::try_from(col::<i32>(row, "slot_seconds")?).unwrap_or(0),
                    value: col(row, "value")?,
                })
            })
            .collect()
    }

    async fn list_series_sql(&self) -> StoreResult<Vec<String>> {
        Ok(
            sql_scalar!("SELECT DISTINCT series FROM series_points ORDER BY series")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    async fn update_model_metadata_sql(
        &self,
        name: &str,
        version: u64,
        metadata: &serde_json::Value,
    ) -> StoreResult<ModelInfo> {
        let v = i64::try_from(version).unwrap_or(i64::MAX);
        let text = to_json("metadata", metadata)?;
        let mut tx = self.pool.begin_with(BEGIN).await?;
        let updated = sql_exec!(
            "UPDATE models SET metadata_json = $3 WHERE name = $1 AND version = $2",
            name,
            v,
            text
        )
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if updated == 0 {
            return Err(StoreError::not_found("model", format!("{name} v{version}")));
        }
        let info = Self::model_info(&mut *tx, name, v).await?;
        tx.commit().await?;
        Ok(info)
    }
}
