"""The job: one `ramp run` as a folder of artifacts, its settings in job.json and one file per stage, which a
rerun of the same command resumes from (`ramp.job.stages`), and which refuses settings other than its own."""
