from taskengine_runtime import run_service

from taskengine_relay.relay import relay

if __name__ == "__main__":
    run_service("relay", relay)
