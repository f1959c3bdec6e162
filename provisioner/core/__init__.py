"""The pure core: records, policy, generations, rendering. No I/O here."""
