"""Load tests: locust scenarios (run only as a subprocess: locust patches its process with gevent) and their runner."""
