"""Migration scripts: discovery, signing, declarative files, SQL verify sections."""
