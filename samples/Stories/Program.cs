Console.WriteLine("stub");
