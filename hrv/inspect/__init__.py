"""Pictures of HRVs: heat maps of a concept's heads laid out like the UNet."""
