"""solo-learn-schema configs of solo-surgical (found by Hydra as pkg://solo_surgical.hosts.solo.configs)."""
