"""Runtime adapters: load an artifact, run it on numpy inputs. Shared by converter validation and the agent."""
