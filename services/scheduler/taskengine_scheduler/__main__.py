from taskengine_runtime import run_service

from taskengine_scheduler.scheduler import scheduler

if __name__ == "__main__":
    run_service("scheduler", scheduler)
