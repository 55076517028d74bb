"""The HRV file format and what it refers to: head layouts of UNets, concept sets, the published HRVs."""
