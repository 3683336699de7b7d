from taskengine_runtime import run_service

from taskengine_gateway.app import gateway

if __name__ == "__main__":
    run_service("gateway", gateway)
