"""From the queue to the relay: claims, throttles, rendering, SMTP and the circuit breaker."""
