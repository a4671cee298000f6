"""The lake: Delta tables (`delta`: versions, snapshots, diffs, `TableRef`) and a Spark session with Delta (`spark`)."""
