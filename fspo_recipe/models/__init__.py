"""Model families and the packed-pairs interface they implement for FSPO; the tiny CPU model (fspo-tiny-assets)."""
