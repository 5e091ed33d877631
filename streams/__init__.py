"""notifguard's shell: Kafka, files, clocks, metrics and the command line around the pure core."""
