"""HTTP enrollment adapters (EST, SCEP, ACME) over the one issuance core."""
