//! Trackerless discovery: a Kademlia DHT (`libp2p-kad` on a libp2p swarm over QUIC) in which
//! agents and origins provide the blob digests they hold.
