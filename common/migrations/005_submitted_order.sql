-- Executions are listed newest first by submission time: several api processes draw
-- ids in blocks, so ids are not in submission order across processes.
CREATE INDEX executions_by_submission ON executions (submitted_at DESC, id DESC);
