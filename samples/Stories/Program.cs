using Kiln.Stories;

return StoriesDemo.Run(args, Console.Out, Console.Error);
